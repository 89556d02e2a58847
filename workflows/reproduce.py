"""`vlcache reproduce`: the paper's main comparison, one command. Given an encoder and local copies of
COCO 2017, SugarCrepe, BiVLC and TROHN-Text, it extracts everything once, trains tflocal and the
baselines on TROHN-Text (COCO train images with hard negative captions), fine-tunes the encoder itself
on the same items (on their captions alone, and NegCLIP-style with their hard negatives; each result
extracted as a space of its own), evaluates every method on SugarCrepe and BiVLC, and writes one table
laid out like the paper's, with the published numbers (workflows/published.json; their sources in
docs/RESEARCH.md) beside the measured ones.

    coco/annotations/captions_val2017.json, coco/train2017/, coco/val2017/   (COCO's own layout)
    sugarcrepe/*.json                                                        (add_att.json, ...)
    bivlc/test.parquet (or any .parquet / save_to_disk folder)               (images inside)
    trohn_text.json                                                          (image_id, caption, negative_caption)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache_schemas import VlcacheError
from pipeline.cluster import ClusterConfig, start_workers
from pipeline.encoders import EncoderRequest, describe
from pipeline.extract import ExtractOptions, extract
from pipeline.finetune.config import FinetuneConfig
from trainer.metrics import markdown_table
from trainer.run import evaluate_head
from trainer.train import train

from .baselines import finetuned_encoders
from .results import Estimate

PUBLISHED = Path(__file__).parent / "published.json"
SUGARCREPE = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
HEADS = ("global-mlp", "maxsim", "tflocal")
EVALUATED = ("sugarcrepe", "bivlc")


@dataclass(frozen=True)
class Sources:
    coco: str  # COCO 2017 root: annotations/, train2017/, val2017/
    sugarcrepe: str
    bivlc: str
    trohn: str

    def check(self) -> None:
        needed = {"COCO train2017 images": os.path.join(self.coco, "train2017"),
                  "COCO val2017 images": os.path.join(self.coco, "val2017"),
                  "SugarCrepe": self.sugarcrepe, "BiVLC": self.bivlc, "TROHN-Text": self.trohn}
        missing = [f"{name} ({path})" for name, path in needed.items() if not os.path.exists(path)]
        if missing:
            raise VlcacheError(f"reproduce needs local copies of: {', '.join(missing)}")


@dataclass(frozen=True)
class ReproduceConfig:
    seeds: tuple[int, ...] = (0,)
    heads: tuple[str, ...] = HEADS
    train: dict[str, Any] = field(default_factory=dict)  # overrides of every head's training defaults
    finetune: FinetuneConfig | None = FinetuneConfig()  # None: no fine-tuning baselines
    batch_size: int = 64  # encoder batch
    device: str = "auto"


def reproduce(out: str, sources: Sources, request: EncoderRequest, config: ReproduceConfig = ReproduceConfig(),
              cluster: ClusterConfig = ClusterConfig(), progress: bool = True) -> dict[str, Any]:
    """Extract, train, evaluate; write out/reproduce.md and out/reproduce.json."""
    sources.check()
    store = os.path.join(out, "store")
    datasets = {"trohn-text": (sources.trohn, "trohn", os.path.join(sources.coco, "train2017"), "train"),
                "sugarcrepe": (sources.sugarcrepe, "sugarcrepe", os.path.join(sources.coco, "val2017"), "test"),
                "bivlc": (sources.bivlc, "bivlc", None, "test")}
    options = ExtractOptions(batch_size=config.batch_size, device=config.device, progress=progress)
    base = describe(request).key
    reports: dict[str, list] = {}
    with start_workers(cluster) as workers:
        for name, (path, fmt, images_root, split) in datasets.items():
            extract(path, fmt, name, request, store, images_root=images_root, split=split, options=options,
                    workers=workers)
        reports["global"] = [_evaluate(out, store, "global", None, config.device, base)]
        for head in config.heads:
            reports[head] = [_evaluate(out, store, head, _train(out, store, head, seed, base, config, progress),
                                       config.device, base) for seed in config.seeds]
        tuned_encoders = finetuned_encoders(store, "trohn-text", request, os.path.join(out, "runs"), config.finetune,
                                            config.seeds, device=config.device, progress=progress) \
            if config.finetune else ()
        for method, seed, tuned, _ in tuned_encoders:
            for name in EVALUATED:
                path, fmt, images_root, split = datasets[name]
                extract(path, fmt, name, tuned, store, images_root=images_root, split=split, options=options,
                        workers=workers)
            reports.setdefault(method, []).append(_evaluate(out, store, "global", None, config.device,
                                                            describe(tuned).key, name=f"{method}-seed{seed}"))
    result = {"model": request.model, "pretrained": request.pretrained, "seeds": list(config.seeds),
              "measured": {m: _scores(runs) for m, runs in reports.items()}, "published": _published()}
    with open(os.path.join(out, "reproduce.json"), "w") as f:
        json.dump(result, f, indent=2, default=lambda e: e.to_json() if isinstance(e, Estimate) else float(e))
    with open(os.path.join(out, "reproduce.md"), "w") as f:
        f.write(markdown(result))
    return result


def _train(out: str, store: str, head: str, seed: int, space: str, config: ReproduceConfig, progress: bool) -> str:
    run_dir = os.path.join(out, "runs", f"{head}-seed{seed}")
    path = run_dir + ".json"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"train": config.train}, f)
    train(store, "trohn-text", head, run_dir, space_key=space, split=None, config_path=path, seed=seed,
          device=config.device, progress=progress)
    return run_dir


def _evaluate(out: str, store: str, head: str, run_dir: str | None, device: str, space: str,
              name: str | None = None) -> dict[str, dict]:
    name = name or (os.path.basename(run_dir) if run_dir else head)
    return {dataset: evaluate_head(store, dataset, head, os.path.join(out, "reports", name, dataset), run_dir=run_dir,
                                   space_key=space, retrieval_k=0, device=device)
            for dataset in EVALUATED}


def _scores(runs: list[dict[str, dict]]) -> dict[str, Estimate]:
    """The paper's columns for one method, mean over seeds: SugarCrepe per subset and average, BiVLC."""
    columns: dict[str, list[float]] = {}
    for run in runs:
        by_subset = run["sugarcrepe"]["caption_accuracy"]["by_subset"]
        for subset in SUGARCREPE:
            columns.setdefault(subset, []).append(by_subset.get(subset, float("nan")))
        columns.setdefault("sugarcrepe avg", []).append(sum(by_subset[s] for s in SUGARCREPE) / len(SUGARCREPE))
        bivlc = run["bivlc"]["bivlc"]
        for key in ("i2t", "t2i", "group"):
            columns.setdefault(f"bivlc {key}", []).append(bivlc[key]["by_type"]["all"])
        columns.setdefault("bivlc swap group", []).append(bivlc["group"]["by_type"].get("swap", float("nan")))
    return {name: Estimate.of(values) for name, values in columns.items()}


def _published() -> dict[str, dict[str, float]]:
    with open(PUBLISHED, encoding="utf-8") as f:
        return json.load(f)["rows"]


COLUMNS = (*SUGARCREPE, "sugarcrepe avg", "bivlc i2t", "bivlc t2i", "bivlc group", "bivlc swap group")


def markdown(result: dict[str, Any]) -> str:
    rows = {f"{method} (measured)": {c: e.text() if isinstance(e, Estimate) else e for c, e in scores.items()}
            for method, scores in result["measured"].items()}
    rows |= {f"{method} (published)": {c: f"{v:.1f}" for c, v in values.items()}
             for method, values in result["published"].items()}
    with open(PUBLISHED, encoding="utf-8") as f:
        note = json.load(f)["note"]
    seeds = result["seeds"]
    return "\n".join([
        f"# The paper's comparison, reproduced: {result['model']} ({result['pretrained'] or 'random init'})", "",
        f"Trained heads and fine-tuned encoders: TROHN-Text, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
        "a fine-tuned encoder is scored by global cosine in its own space; measured cells are "
        "mean ± standard error over seeds, in %. SugarCrepe: caption above its negative; BiVLC: I2T, T2I and "
        "group scores (chance 1/6 for group).", "",
        markdown_table(rows, list(COLUMNS), index_name="method"),
        f"Published rows: {note}", ""])
