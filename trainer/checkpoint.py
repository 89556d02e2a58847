"""Checkpoints: the head's tensors in safetensors, the optimizer's state, and a JSON that rebuilds the
run (head config, train config, data position) and names the embedding space it was trained on."""

from __future__ import annotations

import io
import json
import pickle
import re
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from cache_schemas import Location, SpaceEmbeddings, VlcacheError

from .heads import Dims, Head, build_head

POINTER = "checkpoint.json"
CHECKPOINT_NAME = re.compile(r"checkpoints/step-\d+")


class CheckpointError(VlcacheError, ValueError):
    """A checkpoint that is missing, or made for another embedding space."""


@dataclass
class Checkpoint:
    state: dict[str, Any]  # head, head_config, space_key, dataset, train, step, loader, ...
    head_tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None

    def build_head(self, space: SpaceEmbeddings) -> Head:
        self.check_space(space)
        head = build_head(self.state["head"], Dims.of(space.spec), self.state["head_config"])
        try:
            head.load_state_dict(self.head_tensors)
        except RuntimeError as exc:  # tensors that do not fit the head its state.json describes
            raise CheckpointError(f"the checkpoint's tensors do not fit the {self.state['head']} head its "
                                  f"state.json describes ({type(exc).__name__}); train again") from exc
        return head

    def check_space(self, space: SpaceEmbeddings) -> None:
        if self.state["space_key"] != space.key:
            raise CheckpointError(
                f"checkpoint was trained on embedding space {self.state['space_key']}, but this store's space is "
                f"{space.key} ({space.spec.describe()}): a head only reads the space it was trained on"
            )


def save(run: Location | str, head: Head, optimizer: dict[str, Any], state: dict[str, Any], keep: int = 2) -> str:
    """Write checkpoints/step-N/, then point checkpoint.json at it; keep the last `keep`. Each file is one
    atomic write, local or remote (`run` may be any fsspec URL), so the pointer never names half a checkpoint."""
    run = _location(run)
    folder = folder_of(state["step"])
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(optimizer, buffer)
    try:
        run.write_bytes(f"{folder}/head.safetensors", save_tensors(tensors))
        run.write_bytes(f"{folder}/optimizer.pt", buffer.getvalue())
        run.write_json(f"{folder}/state.json", state)
        run.write_json(POINTER, {"latest": folder})
    except Exception:  # a full disk: the pointer still names the last whole checkpoint; drop this one's files
        _discard(run, folder)
        raise
    for old in run.listdir("checkpoints")[:-keep]:
        run.remove(f"checkpoints/{old}", recursive=True)
    return run.url(folder)


def folder_of(step: int) -> str:
    """The checkpoint of `step`'s folder in its run (zero-padded: names sort by step)."""
    return f"checkpoints/step-{step:07d}"


def _discard(run: Location, folder: str) -> None:
    """Remove a checkpoint folder that failed to be written, unless the pointer names it (saved before)."""
    try:
        latest = _latest(run) if run.exists(POINTER) else None
    except CheckpointError:
        latest = None
    if latest != folder and run.exists(folder):
        run.remove(folder, recursive=True)


def has_checkpoint(run: Location | str) -> bool:
    return _location(run).exists(POINTER)


def load(run: Location | str, with_optimizer: bool = False) -> Checkpoint:
    run = _location(run)
    if not run.exists(POINTER):
        raise CheckpointError(f"no checkpoint in {run.uri} ({POINTER} is missing); "
                              "train a head with vlcache train first")
    folder = _latest(run)
    try:
        state = json.loads(run.read_bytes(f"{folder}/state.json"))
        tensors = load_tensors(run.read_bytes(f"{folder}/head.safetensors"))
        optimizer = torch.load(io.BytesIO(run.read_bytes(f"{folder}/optimizer.pt")),
                               weights_only=True) if with_optimizer else None
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        # json, safetensors and torch each raise their own kind for a truncated or damaged file
        raise CheckpointError(f"the checkpoint in {run.url(folder)} cannot be read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'damaged'}); train again or "
                              "restore the run folder") from None
    return Checkpoint(state, tensors, optimizer)


def _latest(run: Location) -> str:
    """The folder checkpoint.json points at, which must be one of the run's checkpoints/ (a name, no
    path: a pointer cannot lead anywhere else)."""
    try:
        latest = json.loads(run.read_bytes(POINTER))["latest"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{run.url(POINTER)} is damaged; train again or restore the run folder") from None
    if not isinstance(latest, str) or not CHECKPOINT_NAME.fullmatch(latest):
        raise CheckpointError(f"{run.url(POINTER)} points outside the run's checkpoints/ ({latest!r}); "
                              "refusing to follow it")
    return latest


def _location(run: Location | str) -> Location:
    """A run folder given as a path or URL (with no options: the caller's own Location carries them)."""
    return run if isinstance(run, Location) else Location(str(run))
