"""Extraction end to end against the bare forward it wraps and a per-row loop, side by side in one run.

Each method runs in a process of its own, as a user runs it, so imports and start-up count:
  bare     bench/bare_forward.py: the unique images decoded (threads, one batch ahead) and encoded, the
           unique texts tokenized, trimmed and encoded; nothing stored
  vlcache  `vlcache extract` into a fresh store: hashing, dedup, planning, encoding, writing, committing
  per-row  bench/bare_forward.py --per-row: each item's image, caption and negative, one forward each
on a SugarCrepe-shaped set (ITEMS_PER_IMAGE items per image, captions recurring). Bare and vlcache run
at two sizes: the steady-state cost per image is the slope between them, the fixed cost the intercept.
The slope is also taken over each process's own clock (bare: after its imports; vlcache: the run its
summary times), which leaves out the interpreter start, the noisiest part of a run.
Writes extract_speed_bench_DEVICE_MODEL.json and .md under --out, again after every method, so a run
cut short still leaves what it measured."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from results import publish

from pipeline.readers import read_source
from workflows.examples import SUGARCREPE_SIZES, write_sugarcrepe_example

BENCH = os.path.dirname(os.path.abspath(__file__))
ITEMS_PER_IMAGE = 5  # SugarCrepe: 7,511 items over about 1,500 COCO images


def workload(root: str, n_images: int, image_size: int) -> dict:
    """A SugarCrepe-shaped source of JPEG photos and the lists the baselines read (kept, and reused,
    where --work names a folder)."""
    if os.path.exists(os.path.join(root, "workload.json")):
        with open(os.path.join(root, "workload.json")) as f:
            return json.load(f)
    total = sum(SUGARCREPE_SIZES.values())
    sizes = {k: max(1, round(v * ITEMS_PER_IMAGE * n_images / total)) for k, v in SUGARCREPE_SIZES.items()}
    annotations, images = write_sugarcrepe_example(root, sizes=sizes, n_images=n_images, image_size=image_size,
                                                         image_format="jpg")
    raw = read_source(annotations, "sugarcrepe", images)
    paths = list(dict.fromkeys(raw.image_uris()))
    with open(os.path.join(root, "images.txt"), "w") as f:
        f.write("\n".join(paths))
    with open(os.path.join(root, "texts.json"), "w") as f:
        json.dump(list(raw.texts()), f)
    with open(os.path.join(root, "items.json"), "w") as f:
        json.dump([{"image": it.image, "caption": it.caption, "negatives": list(it.negative_captions)}
                   for it in raw.items], f)
    work = {"root": root, "annotations": annotations, "images_root": images, "images": len(paths),
            "texts": len(set(raw.texts())), "items": len(raw.items)}
    with open(os.path.join(root, "workload.json"), "w") as f:
        json.dump(work, f)
    return work


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def bare(work: dict, args, *extra: str) -> tuple[float, dict]:
    seconds, out = timed([sys.executable, os.path.join(BENCH, "bare_forward.py"), work["root"], "--model",
                          args.model, "--device", args.device, "--batch-size", str(args.batch_size), *extra])
    return seconds, json.loads(out.strip().splitlines()[-1])


def vlcache(work: dict, args, store: str, variant: str = "") -> tuple[float, dict]:
    """`variant`: extract options, after any NAME=VALUE environment settings (as a shell reads them)."""
    words = variant.split()
    env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    extra = [w for w in words if "=" not in w or w.startswith("-")]
    shutil.rmtree(store, ignore_errors=True)
    seconds, out = timed([sys.executable, "-m", "workflows.cli", "extract", work["annotations"], "--format",
                          "sugarcrepe", "--dataset", "sc", "--model", args.model, "--store", store, "--images-root",
                          work["images_root"], "--device", args.device, "--batch-size", str(args.batch_size),
                          "--quiet", "--json", *extra], env)
    shutil.rmtree(store, ignore_errors=True)
    return seconds, json.loads(out)


def line(works: list[dict], runs: list[tuple[float, dict]]) -> dict:
    """Seconds per image at steady state (slope) and fixed seconds (intercept) from two sizes, on the
    wall clock and on the process's own (bare: work_s, after imports; vlcache: its summary's seconds)."""
    (small, large), (t_small, t_large) = works, [seconds for seconds, _ in runs]
    slope = (t_large - t_small) / (large["images"] - small["images"])
    own = [run.get("work_s", run.get("seconds")) for _, run in runs]
    return {"seconds": [t_small, t_large], "per_image_s": slope, "fixed_s": t_small - slope * small["images"],
            "images_per_s_steady": 1 / slope,
            "in_process_images_per_s": (large["images"] - small["images"]) / (own[1] - own[0]),
            "runs": [run for _, run in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, nargs=2, default=[64, 256], help="the two sizes, unique images")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for bare and vlcache")
    parser.add_argument("--per-row", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--model-only", type=int, default=0, help="forwards of a ready batch, for the model's rate")
    parser.add_argument("--vlcache-extra", default="", help="extra `vlcache extract` options, e.g. '--threads 2'")
    parser.add_argument("--also", action="append", default=[], metavar="OPTIONS",
                        help="also measure `vlcache extract OPTIONS` side by side (repeatable)")
    parser.add_argument("--work", help="a folder to keep the workloads in and reuse (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or tmp
        works = [workload(os.path.join(root, f"n{n}-{args.image_size}px"), n, args.image_size) for n in args.images]
        results = {"machine": machine(args.device), "model": args.model, "device": args.device,
                   "batch_size": args.batch_size, "workloads": [{k: w[k] for k in ("images", "texts", "items")}
                                                                for w in works]}

        def best(run) -> list[tuple[float, dict]]:
            return [min((run(w) for _ in range(args.repeats)), key=lambda r: r[0]) for w in works]

        def measured(name: str, value) -> None:
            results[name] = value
            results["ratios"] = ratios(results)
            publish(args.out, f"extract_speed_bench_{args.device}_{args.model}", results, table(results))

        def ours(variant: str) -> dict:
            store = os.path.join(tmp, "store")
            return line(works, best(lambda w: vlcache(w, args, store, f"{args.vlcache_extra} {variant}")))

        measured("bare", line(works, best(lambda w: bare(w, args))))
        measured("vlcache", ours(""))
        for extra in args.also:
            measured(f"vlcache {extra}", ours(extra))
        if args.model_only:
            measured("model_only_images_per_s",
                     bare(works[1], args, "--model-only", str(args.model_only))[1]["model_only_images_per_s"])
        if args.per_row:
            measured("per_row", {"seconds": bare(works[1], args, "--per-row")[0]})


def ratios(r: dict) -> dict:
    if "vlcache" not in r:
        return {}
    out = {"steady_state_vs_bare": r["bare"]["per_image_s"] / r["vlcache"]["per_image_s"],
           "fixed_s_beyond_bare": r["vlcache"]["fixed_s"] - r["bare"]["fixed_s"]}
    for name in ("vlcache", *_variants(r)):
        if name != "vlcache":
            out[f"{name}: steady_state_vs_bare"] = r["bare"]["per_image_s"] / r[name]["per_image_s"]
        out[f"{name}: in_process_vs_bare"] = r[name]["in_process_images_per_s"] / r["bare"]["in_process_images_per_s"]
    if "per_row" in r:
        out["speedup_vs_per_row"] = r["per_row"]["seconds"] / r["vlcache"]["seconds"][1]
    return out


def table(r: dict) -> str:
    small, large = r["workloads"]
    rows = [f"Machine: {r['machine']}; {r['model']} on {r['device']}, batch {r['batch_size']}; sets of "
            f"{small['images']} and {large['images']} unique images ({small['items']} and {large['items']} items).",
            "", "| method | wall s (small) | wall s (large) | steady images/s | fixed s | steady images/s, own clock |",
            "|---|---:|---:|---:|---:|---:|"]
    for name in [n for n in ("bare", "vlcache") if n in r] + _variants(r):
        m = r[name]
        rows.append(f"| {name} | {m['seconds'][0]:.1f} | {m['seconds'][1]:.1f} | {m['images_per_s_steady']:.1f} "
                    f"| {m['fixed_s']:.1f} | {m['in_process_images_per_s']:.1f} |")
    if not r["ratios"]:
        return "\n".join(rows) + "\n"
    if "per_row" in r:
        rows.append(f"| per-row loop, no dedup | | {r['per_row']['seconds']:.1f} | | |")
    rows += ["", "| ratio | value | target |", "|---|---:|---|",
             f"| vlcache steady state / bare forward | {r['ratios']['steady_state_vs_bare']:.2f}x | >= 0.95x |",
             *(f"| {n} steady state / bare forward | {r['ratios'][n + ': steady_state_vs_bare']:.2f}x | >= 0.95x |"
               for n in _variants(r)),
             *(f"| {n} steady state / bare forward, own clocks | {r['ratios'][n + ': in_process_vs_bare']:.2f}x | |"
               for n in ("vlcache", *_variants(r))),
             f"| vlcache fixed cost beyond bare | {r['ratios']['fixed_s_beyond_bare']:.1f} s | <= 5 s |"]
    if "per_row" in r:
        rows.append(f"| per-row loop time / vlcache (large set) | {r['ratios']['speedup_vs_per_row']:.1f}x | >= 3x |")
    for name in ("vlcache", *_variants(r)):
        stages = r[name]["runs"][1].get("worker_seconds", {})
        if stages:
            seconds = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
            rows.append(f"| {name} worker seconds (large set) | {seconds} | |")
    if "model_only_images_per_s" in r:
        rows.append(f"| model alone, images/s (batch on the device) | {r['model_only_images_per_s']:.0f} | |")
    return "\n".join(rows) + "\n"


def _variants(r: dict) -> list[str]:
    return [name for name in r if name.startswith("vlcache ")]


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} ({os.cpu_count()} CPU cores), torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


if __name__ == "__main__":
    main()
