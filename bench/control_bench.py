"""The positive control at full size, as a user runs it: `vlcache train --head H --device cpu --seed S`
with no --config (the library defaults), every trained head, three seeds, on the control store
(workflows/control, 4000 training scenes, 500 per test split). Global cosine must sit at chance on
the control's swaps (the control is valid); a head passes with >= 95% on swaps in-domain and >= 90%
out-of-domain in every seed. Writes control_bench.json and control_bench.md.

    python bench/control_bench.py --out runs/bench [--heads tflocal maxsim global-mlp] [--seeds 0 1 2]"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from results import publish

from workflows.cli import main as vlcache
from workflows.control import WORLD, build_control
from workflows.results import headline

SPLITS = ("test_id", "test_ood")
TARGETS = {"test_id": 0.95, "test_ood": 0.90}  # swap accuracy a head must reach in every seed
VALID = 0.60  # global cosine must stay at or under this on swaps
GLOBAL_ONLY = ("global-mlp",)  # trained heads that read only the global embeddings


def run(args: list[str]) -> None:
    code = vlcache(args)
    if code != 0:
        raise SystemExit(f"vlcache {' '.join(args)} exited {code}")


def measure(report_dir: str) -> dict[str, float]:
    with open(os.path.join(report_dir, "report.json")) as f:
        report = json.load(f)
    h = headline(report)
    return {"swap": h["attribute swap"], "replace": h["replace"],
            "at_chance": bool(report.get("training") and report["training"]["status"] == "at chance")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--heads", nargs="+", default=["tflocal", "maxsim", "global-mlp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    root = os.path.join(args.out, "control")
    control = build_control(root, WORLD)
    common = ["--store", control.store, "--quiet"]
    results = {"machine": f"{platform.machine()}, {torch.get_num_threads()} CPU threads",
               "world": control.world["counts"], "runs": {}}
    for split in SPLITS:
        run(["eval", "--store", control.store, "--dataset", f"control-{split}", "--head", "global",
             "--out", os.path.join(root, "global", split)])
        scores = measure(os.path.join(root, "global", split))
        results["runs"].setdefault("global", []).append({"split": split, **scores})
    for head in args.heads:
        for seed in args.seeds:
            run_dir = os.path.join(root, "runs", f"{head}-seed{seed}")
            started = time.perf_counter()
            run(["train", *common, "--dataset", "control-train", "--head", head, "--out", run_dir, "--device", "cpu",
                 "--seed", str(seed), *[a for s in SPLITS for a in ("--eval-dataset", f"control-{s}")]])
            minutes = (time.perf_counter() - started) / 60
            scores = {split: measure(os.path.join(run_dir, "eval", f"control-{split}")) for split in SPLITS}
            results["runs"].setdefault(head, []).append({"seed": seed, "minutes": minutes, **scores})
    publish(args.out, "control_bench", results, _table(results))


def _table(results: dict) -> str:
    lines = [f"Positive control, library defaults, `--device cpu` ({results['machine']}); swap / replace accuracy, %:",
             "", "| head | seed | in-domain swap | in-domain replace | out-of-domain swap | out-of-domain replace "
             "| minutes | at chance |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    glob = {r["split"]: r for r in results["runs"]["global"]}
    lines.append(f"| global | - | {100 * glob['test_id']['swap']:.1f} | {100 * glob['test_id']['replace']:.1f} | "
                 f"{100 * glob['test_ood']['swap']:.1f} | {100 * glob['test_ood']['replace']:.1f} | - | - |")
    verdicts = [f"- control valid (global swaps at most {100 * VALID:.0f}%): "
                f"{all(r['swap'] <= VALID for r in glob.values())}"]
    for head, runs in results["runs"].items():
        if head == "global":
            continue
        for r in runs:
            i, o = r["test_id"], r["test_ood"]
            lines.append(f"| {head} | {r['seed']} | {100 * i['swap']:.1f} | {100 * i['replace']:.1f} | "
                         f"{100 * o['swap']:.1f} | {100 * o['replace']:.1f} | {r['minutes']:.1f} | "
                         f"{i['at_chance']} |")
        slowest = f"slowest run {max(r['minutes'] for r in runs):.1f} min"
        if head in GLOBAL_ONLY:  # sees only the bag-of-words globals: must stay at chance, trained or not
            valid = all(r[s]["swap"] <= VALID for r in runs for s in SPLITS)
            verdicts.append(f"- {head}: swaps at most {100 * VALID:.0f}% in all {len(runs)} seeds (the control "
                            f"is valid for a trained global head too): {valid}; {slowest}")
            continue
        passed = all(r[s]["swap"] >= TARGETS[s] and not r[s]["at_chance"] for r in runs for s in SPLITS)
        verdicts.append(f"- {head}: swaps >= {100 * TARGETS['test_id']:.0f}% in-domain and >= "
                        f"{100 * TARGETS['test_ood']:.0f}% out-of-domain in all {len(runs)} seeds: {passed}; "
                        f"{slowest}")
    return "\n".join([*lines, "", *verdicts, ""])


if __name__ == "__main__":
    main()
