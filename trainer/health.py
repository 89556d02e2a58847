"""Whether a run trained: a loss that never left chance, or one that stopped being a number.

Chance is the loss of a head that scores every candidate alike: per scoring group, ln(its number
of candidates). A run whose recent loss is still within CHANCE_RATIO of chance has learned nothing
a verdict could rest on; its checkpoint and every report made from it say so. A non-finite loss or
gradient stops the run before the step is applied, so no checkpoint ever holds its result."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from cache_schemas import VlcacheError

CHANCE_RATIO = 0.9  # recent loss / chance loss at or above this: the head is still at chance
WINDOW = 50  # recent steps the judgement averages over


class TrainingError(VlcacheError, RuntimeError):
    """Training cannot go on (a non-finite loss or gradient)."""


@dataclass(frozen=True)
class Health:
    status: str  # "learning" or "at chance"
    loss: float  # mean loss over the recent window
    chance_loss: float  # mean chance loss over the same steps
    steps: int  # how many steps the window holds

    @property
    def at_chance(self) -> bool:
        return self.status == "at chance"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        return (f"its training loss stayed at chance ({self.loss:.3f} against ln K = {self.chance_loss:.3f} over "
                f"the last {self.steps} steps): it never learned to tell captions apart, and its scores say nothing")


class HealthMonitor:
    """Keeps the recent losses and their chance levels; judges the run at any step."""

    def __init__(self, window: int = WINDOW):
        self.recent: deque[tuple[float, float]] = deque(maxlen=window)

    def observe(self, step: int, loss: float, grad_norm: float, chance_loss: float) -> None:
        """Record a step's loss; raise TrainingError if the loss or its gradient is not finite."""
        for what, value in (("loss", loss), ("gradient norm", grad_norm)):
            if not math.isfinite(value):
                raise TrainingError(f"training stopped at step {step}: the {what} is {value}; the step was not "
                                    "applied and no checkpoint holds it (a damaged store? run vlcache cache verify; "
                                    "or lower lr)")
        self.recent.append((loss, chance_loss))

    def health(self) -> Health:
        if not self.recent:
            return Health("at chance", math.nan, math.nan, 0)
        loss = sum(x for x, _ in self.recent) / len(self.recent)
        chance = sum(c for _, c in self.recent) / len(self.recent)
        status = "at chance" if loss >= CHANCE_RATIO * chance else "learning"
        return Health(status, loss, chance, len(self.recent))


def health_of(state: dict[str, Any]) -> Health | None:
    """The health recorded in a checkpoint's state (None for runs made before it was recorded)."""
    return Health(**state["health"]) if state.get("health") else None
