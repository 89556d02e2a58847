"""How tflocal's design was chosen: its variants trained side by side on the positive control and on
the demo's world encoder, with the same protocol and seeds, from the same stores. Variants differ in
context layers per side (`layers`) and cross-attention layers per pair (`pair_layers`). Writes
tflocal_variants.json and tflocal_variants.md.

    python bench/tflocal_variants.py --out runs/bench [--seeds 0 1 2] [--steps 600]

Builds the control store and the demo's world store under --out (the world encoder's pretraining
takes about 5 minutes on 2 cores, and is reused when it is already there)."""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from results import publish

from pipeline.cluster import ClusterConfig, start_workers
from pipeline.extract import ExtractOptions, extract
from trainer.train import train
from workflows.control import WORLD as CONTROL_WORLD
from workflows.control import build_control
from workflows.demo import SPLITS, DemoConfig, _encoder_request, _pretrained_encoder
from workflows.results import headline
from workflows.world import generate

VARIANTS = {
    "late interaction only (layers 0, pair_layers 0)": {"layers": 0, "pair_layers": 0},
    "context layers (layers 1, pair_layers 0)": {"layers": 1, "pair_layers": 0},
    "context + pair layer (layers 1, pair_layers 1)": {"layers": 1, "pair_layers": 1},
}


def world_store(out: str) -> str:
    config = DemoConfig()
    world = generate(os.path.join(out, "world"), config.world)
    checkpoint = _pretrained_encoder(out, world["jsonl"]["train"], config.pretrain, progress=True)
    store = os.path.join(out, "store")
    with start_workers(ClusterConfig()) as workers:
        for split in SPLITS:
            extract(world["jsonl"][split], "bivlc", f"world-{split}", _encoder_request(checkpoint), store,
                    options=ExtractOptions(rows_per_shard=1024, progress=False), workers=workers)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    root = os.path.join(args.out, "tflocal_variants")
    stores = {"control": build_control(os.path.join(root, "control"), CONTROL_WORLD).store,
              "world": world_store(os.path.join(root, "world"))}
    train_settings = {"steps": args.steps, "batch_size": 64, "lr": 1e-3, "warmup_steps": 50, "eval_every": args.steps,
                      "checkpoint_every": args.steps, "retrieval_k": 2, "in_batch_negatives": 6}
    results: dict = {"protocol": train_settings, "runs": []}
    for store_name, store in stores.items():
        for variant, settings in VARIANTS.items():
            for seed in args.seeds:
                name = f"{store_name}-{settings['layers']}-{settings['pair_layers']}-seed{seed}"
                run_dir = os.path.join(root, "runs", name)
                config = run_dir + ".json"
                os.makedirs(os.path.dirname(config), exist_ok=True)
                with open(config, "w") as f:
                    json.dump({"head": settings, "train": {**train_settings, "seed": seed}}, f)
                started = time.perf_counter()
                reports = train(store, f"{store_name}-train", "tflocal", run_dir, config_path=config, progress=False,
                                eval_datasets=[f"{store_name}-test_id", f"{store_name}-test_ood"])
                results["runs"].append({
                    "store": store_name, "variant": variant, "seed": seed, "seconds": time.perf_counter() - started,
                    **{split: headline(reports[f"{store_name}-{split}"])["attribute swap"]
                       for split in ("test_id", "test_ood")}})
    publish(args.out, "tflocal_variants", results, _table(results))


def _table(results: dict) -> str:
    lines = ["tflocal variants, attribute-swap accuracy (mean ± standard error over seeds, %) and seconds per run:",
             "", "| store | variant | in-domain | out-of-domain | seconds |", "|---|---|---:|---:|---:|"]
    for store in ("control", "world"):
        for variant in VARIANTS:
            runs = [r for r in results["runs"] if r["store"] == store and r["variant"] == variant]
            cells = []
            for split in ("test_id", "test_ood"):
                values = np.array([r[split] for r in runs])
                se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
                cells.append(f"{100 * values.mean():.1f} ± {100 * se:.1f}")
            lines.append(f"| {store} | {variant} | {cells[0]} | {cells[1]} | "
                         f"{np.mean([r['seconds'] for r in runs]):.0f} |")
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
