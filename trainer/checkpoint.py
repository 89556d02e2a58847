"""Checkpoints: the head's tensors in safetensors, the optimizer's state, and a JSON that rebuilds the
run (head config, train config, data position) and names the embedding space it was trained on."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cache_schemas import SpaceEmbeddings, VlcacheError

from .heads import Dims, Head, build_head

POINTER = "checkpoint.json"


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


def save(run_dir: str, head: Head, optimizer: dict[str, Any], state: dict[str, Any], keep: int = 2) -> str:
    """Write checkpoints/step-N/, then point checkpoint.json at it (atomic); keep the last `keep`."""
    name = f"step-{state['step']:07d}"
    folder = os.path.join(run_dir, "checkpoints", name)
    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, os.path.join(folder, "head.safetensors"))
    torch.save(optimizer, os.path.join(folder, "optimizer.pt"))
    with open(os.path.join(folder, "state.json"), "w") as f:
        json.dump(state, f, indent=2)
    tmp = os.path.join(run_dir, POINTER + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"latest": f"checkpoints/{name}"}, f)
    os.replace(tmp, os.path.join(run_dir, POINTER))
    for old in sorted(os.listdir(os.path.join(run_dir, "checkpoints")))[:-keep]:
        shutil.rmtree(os.path.join(run_dir, "checkpoints", old))
    return folder


def has_checkpoint(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, POINTER))


def load(run_dir: str, with_optimizer: bool = False) -> Checkpoint:
    pointer = os.path.join(run_dir, POINTER)
    if not os.path.isfile(pointer):
        raise CheckpointError(f"no checkpoint in {run_dir} ({POINTER} is missing); "
                              "train a head with vlcache train first")
    folder = _latest(run_dir)
    try:
        with open(os.path.join(folder, "state.json")) as f:
            state = json.load(f)
        tensors = load_file(os.path.join(folder, "head.safetensors"))
        optimizer = torch.load(os.path.join(folder, "optimizer.pt"), weights_only=True) if with_optimizer else None
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        # json, safetensors and torch each raise their own kind for a truncated or damaged file
        raise CheckpointError(f"the checkpoint in {folder} cannot be read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'damaged'}); train again or "
                              "restore the run folder") from None
    return Checkpoint(state, tensors, optimizer)


def _latest(run_dir: str) -> str:
    """The folder checkpoint.json points at, which must lie inside the run's checkpoints/."""
    try:
        with open(os.path.join(run_dir, POINTER)) as f:
            latest = json.load(f)["latest"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{os.path.join(run_dir, POINTER)} is damaged; train again or restore "
                              "the run folder") from None
    root = os.path.realpath(os.path.join(run_dir, "checkpoints"))
    folder = os.path.realpath(os.path.join(run_dir, str(latest)))
    if os.path.dirname(folder) != root:
        raise CheckpointError(f"{os.path.join(run_dir, POINTER)} points outside the run's checkpoints/ "
                              f"({latest!r}); refusing to follow it")
    return folder
