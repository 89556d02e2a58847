"""What training from the cache buys, side by side in one run at ViT-B-32 dims: a head's training step
on cached tensors against the same step preceded by a ViT-B-32 image forward (what training with the
encoder in the loop would cost at least). Batches shaped like SugarCrepe's: 64 items, one hard
negative caption each, in-batch negatives from the head's default training settings. Writes
head_speed.json and head_speed.md.

    python bench/head_speed_bench.py --out runs/bench [--device cuda]"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import open_clip
import torch
from results import publish

from trainer.config import load_config
from trainer.data import Batch
from trainer.heads import Dims, build_head
from trainer.objective import groups, loss

DIMS = Dims(patches=49, patch_dim=768, text_dim=512, embed_dim=512, context_length=77)
TOKENS = 15  # real tokens of a typical caption (RESEARCH.md: ~15 of 77)


def batch(items: int, device: torch.device, seed: int = 0) -> Batch:
    """Random cached tensors in the shape of a SugarCrepe batch: each item its image, its caption and
    one negative caption."""
    g = torch.Generator().manual_seed(seed)
    texts = 2 * items
    return Batch(
        examples=np.arange(items), epoch=0, position=0,
        images={"patches": torch.randn(items, DIMS.patches, DIMS.patch_dim, generator=g),
                "global": torch.randn(items, DIMS.embed_dim, generator=g)},
        texts={"tokens": torch.randn(texts, TOKENS, DIMS.text_dim, generator=g),
               "mask": torch.ones(texts, TOKENS, dtype=torch.bool),
               "global": torch.randn(texts, DIMS.embed_dim, generator=g)},
        image_rows=torch.arange(items), text_rows=torch.arange(texts), positive=torch.arange(items),
        negatives=torch.arange(items, texts)[:, None], negative_images=torch.full((items, 1), -1),
    ).to(device)


def time_steps(step, repeats: int, device: torch.device) -> float:
    """Median seconds of `step()` after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tflocal", type=json.loads, default={}, help="tflocal settings to try (JSON)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    vit = open_clip.create_model("ViT-B-32", device=device).visual.eval().requires_grad_(False)
    pixels = torch.randn(64, 3, 224, 224, device=device)
    results, rows = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}",
                     "dims": DIMS.__dict__, "heads": {}}, {}
    for name in ("tflocal", "maxsim"):
        _, train_cfg = load_config(name)
        head = build_head(name, DIMS, args.tflocal if name == "tflocal" else None).to(device)
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4)
        data = batch(train_cfg.batch_size, torch.device("cpu"))  # groups are drawn on the host, as in training
        scoring = groups(data, train_cfg.in_batch_negatives, torch.Generator().manual_seed(0)).to(device)
        data = data.to(device)

        def head_step(head=head, optimizer=optimizer, data=data, scoring=scoring):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):  # as training
                value = loss(head, data, scoring)
            value.backward()
            optimizer.step()

        def encoder_step(head_step=head_step, images=pixels[:train_cfg.batch_size]):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                vit(images)
            head_step()

        cached, in_loop = time_steps(head_step, args.repeats, device), time_steps(encoder_step, args.repeats, device)
        results["heads"][name] = {"parameters": head.n_parameters(), "pairs": int(scoring.valid.sum()),
                                  "batch": train_cfg.batch_size, "cached_step_s": cached, "encoder_step_s": in_loop,
                                  "speedup": in_loop / cached, "settings": head.config.to_json()}
        rows[name] = (head.n_parameters(), int(scoring.valid.sum()), in_loop / cached)
    table = "\n".join([
        f"Head training step from the cache vs with a ViT-B-32 image forward per step ({results['machine']}):", "",
        "| head | parameters | pairs per step | speed-up from the cache |", "|---|---:|---:|---:|",
        *[f"| {n} | {p / 1e6:.2f}M | {pairs} | **{s:.1f}x** |" for n, (p, pairs, s) in rows.items()], ""])
    publish(args.out, "head_speed", results, table)


if __name__ == "__main__":
    main()
