"""`evaluate_head`: the eval command's library side (a head from its name or a run folder, then a report)."""

from __future__ import annotations

from typing import Any

from cache_schemas import ChunkCache, SpaceEmbeddings, VlcacheError, open_store
from cache_schemas.output import run_folder, staged

from . import checkpoint
from .evaluate import evaluate, write_report
from .heads import Dims, Head, build_head
from .train import resolve_device


def evaluate_head(store_uri: str, dataset: str, head_name: str, out: str, *, run_dir: str | None = None,
                  space_key: str | None = None, split: str | None = None, device: str = "auto",
                  retrieval_k: int = 16, storage_options: dict | None = None,
                  progress: bool = False, cache: ChunkCache | None = None) -> dict[str, Any]:
    """report.json and report.md in `out` (a folder or any fsspec URL, written once the report is made)."""
    folder = run_folder(out, store_uri, storage_options, write=True)
    store = open_store(store_uri, storage_options=storage_options, cache=cache)
    space = store.space_or_only(space_key)
    data = store.dataset(dataset)
    head, state = load_head(space, head_name, run_dir)
    torch_device = resolve_device(device)
    report = evaluate(space, data, head.to(torch_device), split=split, device=str(torch_device),
                      retrieval_k=retrieval_k, progress=progress)
    report["checkpoint"] = run_dir
    if run_dir:
        report["training"] = state.get("health")
    with staged(folder) as local:
        write_report(report, local)
    return report


def load_head(space: SpaceEmbeddings, head_name: str | None, run_dir: str | None = None) -> tuple[Head, dict]:
    """The head a run folder holds (`head_name`, if given, must match it), or an untrained one by name
    (global, parameter-free maxsim); with the run's checkpoint state ({} without a run)."""
    if run_dir:  # a folder or URL; on the store's filesystem, read with the store's options
        ckpt = checkpoint.load(run_folder(run_dir, space.location.uri, space.location.storage_options,
                                          what="--checkpoint"))
        if head_name and ckpt.state["head"] != head_name:
            raise VlcacheError(f"{run_dir} holds a {ckpt.state['head']} head, not {head_name}")
        return ckpt.build_head(space), ckpt.state
    if head_name in ("global", "maxsim"):
        return build_head(head_name, Dims.of(space.spec), {} if head_name == "global" else {"learnable": False}), {}
    raise VlcacheError(f"head {head_name} must be trained first: pass --checkpoint RUN_DIR")
