"""Checkpoints: the head's tensors in safetensors, the optimizer's state, and a JSON that rebuilds the
run (head config, train config, data position) and names the embedding space it was trained on."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

import torch
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
        head.load_state_dict(self.head_tensors)
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
    with open(pointer) as f:
        folder = os.path.join(run_dir, json.load(f)["latest"])
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    optimizer = torch.load(os.path.join(folder, "optimizer.pt"), weights_only=True) if with_optimizer else None
    return Checkpoint(state, load_file(os.path.join(folder, "head.safetensors")), optimizer)
