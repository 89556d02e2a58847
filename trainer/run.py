"""`evaluate_head`: the eval command's library side (a head from its name or a run folder, then a report)."""

from __future__ import annotations

from typing import Any

from cache_schemas import VlcacheError, open_store

from . import checkpoint
from .evaluate import evaluate, write_report
from .heads import Dims, build_head
from .train import pick_space, resolve_device


def evaluate_head(store_uri: str, dataset: str, head_name: str, out: str, *, run_dir: str | None = None,
                  space_key: str | None = None, split: str | None = None, device: str = "auto",
                  retrieval_k: int = 16, storage_options: dict | None = None) -> dict[str, Any]:
    store = open_store(store_uri, storage_options=storage_options)
    space = pick_space(store, space_key)
    data = store.dataset(dataset)
    if run_dir:
        ckpt = checkpoint.load(run_dir)
        if ckpt.state["head"] != head_name:
            raise VlcacheError(f"{run_dir} holds a {ckpt.state['head']} head, not {head_name}")
        head = ckpt.build_head(space)
    elif head_name in ("global", "maxsim"):
        head = build_head(head_name, Dims.of(space.spec), {} if head_name == "global" else {"learnable": False})
    else:
        raise VlcacheError(f"head {head_name} must be trained first: pass --checkpoint RUN_DIR")
    torch_device = resolve_device(device)
    report = evaluate(space, data, head.to(torch_device), split=split, device=str(torch_device),
                      retrieval_k=retrieval_k)
    report["checkpoint"] = run_dir
    if run_dir:
        report["training"] = ckpt.state.get("health")
    write_report(report, out)
    return report
