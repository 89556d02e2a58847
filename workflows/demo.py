"""The README's demo, end to end on one CPU box: generate a controlled world, pretrain a small CLIP on
it, extract its embeddings once, train heads from the cache, and compare every method in-domain and
out-of-domain, hard swaps on their own. Writes report.md, report.json and PNG plots to the run folder.

`--sweep` repeats the study at smaller size over scene complexity (objects per scene, attributes)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cache_schemas import open_store
from pipeline.cluster import ClusterConfig, dask_client
from pipeline.encoder import EncoderRequest, file_sha256
from pipeline.extract import ExtractOptions, extract
from pipeline.regions import crop_regions, encoder_for
from trainer.diagnostic import diagnose, pooled_regions
from trainer.evaluate import evaluate
from trainer.heads import Dims, build_head
from trainer.train import train

from . import report as demo_report
from .world import WorldConfig, generate
from .world.pretrain import PretrainConfig, pretrain

SPLITS = ("train", "test_id", "test_ood")
TEST_SPLITS = ("test_id", "test_ood")
ENCODER = "vlcache-world"


@dataclass(frozen=True)
class DemoConfig:
    # 64 px and 8000 scenes: where the pretrained encoder learns replace-type negatives but not swaps
    # within the time budget (bench/world_encoder_study.py has the settings tried).
    world: WorldConfig = WorldConfig(n_train=8000, n_test=500, image_size=64)
    pretrain: PretrainConfig = PretrainConfig()
    # Head configs sized for two CPU cores; the library defaults (trainer/configs) are for a GPU.
    # Retrieval re-ranks a global top 4 only: the study is about hard negatives, not retrieval.
    heads: dict[str, dict] = field(default_factory=lambda: {
        "maxsim": {"head": {"dim": 128}, "train": {"steps": 250, "batch_size": 64, "lr": 1e-3, "in_batch_negatives": 4,
                                                    "eval_every": 250, "retrieval_k": 4}},
        "global-mlp": {"head": {"hidden": 512}, "train": {"steps": 300, "batch_size": 128, "lr": 1e-3,
                                                         "eval_every": 300, "retrieval_k": 4}},
        "tflocal": {"head": {"width": 128, "layers": 2, "heads": 4, "pool": 2, "dropout": 0.0},
                    "train": {"steps": 500, "batch_size": 32, "lr": 1e-3, "in_batch_negatives": 2, "eval_every": 500,
                              "retrieval_k": 4}},
    })
    # Crops resized to the full input are the classic region source, but they show the tower a scale
    # it never saw; add "resize" to compare (about 40 s more).
    crop_styles: tuple[str, ...] = ("canvas",)
    pooled_sources: tuple[str, ...] = ("patches", "values")

    def small(self) -> DemoConfig:
        """A minute-long version, for tests and smoke runs."""
        return self._scaled(n_train=200, n_test=50, pretrain_steps=30, head_steps=20)

    def for_sweep(self) -> DemoConfig:
        """Each sweep point at about half the demo's cost."""
        return self._scaled(n_train=4000, n_test=300, pretrain_steps=300, head_steps=200)

    def _scaled(self, n_train: int, n_test: int, pretrain_steps: int, head_steps: int) -> DemoConfig:
        heads = {name: {"head": cfg["head"], "train": {**cfg["train"], "steps": head_steps, "eval_every": head_steps}}
                 for name, cfg in self.heads.items()}
        warmup = min(self.pretrain.warmup, pretrain_steps // 5)
        return dataclasses.replace(
            self, world=dataclasses.replace(self.world, n_train=n_train, n_test=n_test), heads=heads,
            pretrain=dataclasses.replace(self.pretrain, steps=pretrain_steps, warmup=warmup))


def run_demo(out: str, config: DemoConfig = DemoConfig(), progress: bool = True, plots: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    log = functools.partial(_stage, timings=timings, progress=progress)
    for stale in ("store", "runs"):  # results are recomputed; only the encoder checkpoint is reused
        shutil.rmtree(os.path.join(out, stale), ignore_errors=True)
    with log("generate the world"):
        world = generate(os.path.join(out, "world"), config.world)
    with log("pretrain the encoder"):
        checkpoint = _pretrained_encoder(out, world["jsonl"]["train"], config.pretrain, progress)
    with log("extract embeddings"), dask_client(ClusterConfig()) as client:
        store = os.path.join(out, "store")
        for split in SPLITS:
            extract(world["jsonl"][split], "bivlc", f"world-{split}", _encoder_request(checkpoint), store,
                    options=ExtractOptions(rows_per_shard=1024, progress=False), client=client)
    results: dict[str, dict[str, Any]] = {}
    with log("zero-shot global cosine and the diagnostic"):
        results.update(_untrained_methods(store, config))
    if progress:  # the first answer, before any head is trained
        print("\n".join(demo_report.encoder_verdicts(_headline(results)["global"])).replace("**", ""), flush=True)
    with log("train heads"):
        curves = _train_heads(out, store, config, progress, results)
    summary = {"config": _jsonable(config), "results": _headline(results), "timings": timings,
               "seconds": time.perf_counter() - started, "world": world["counts"]}
    demo_report.write(out, summary, results, curves, world_dir=os.path.join(out, "world"), plots=plots)
    return summary


# The sweep's points: scene complexity up, one knob at a time.
SWEEP: tuple[dict[str, Any], ...] = (
    {"min_objects": 2, "max_objects": 2}, {"min_objects": 3, "max_objects": 3},
    {"min_objects": 4, "max_objects": 4}, {"min_objects": 5, "max_objects": 5},
    {"min_objects": 3, "max_objects": 3, "attributes": ("colour",)},
    {"min_objects": 3, "max_objects": 3, "attributes": ("colour", "size")},
)


def run_sweep(out: str, config: DemoConfig = DemoConfig(), points: tuple[dict[str, Any], ...] = SWEEP,
              progress: bool = True) -> list[dict[str, Any]]:
    """The study at each point of `points` (changes to the world config); plots swap accuracy and swap
    group score against complexity for every method."""
    results = []
    for changes in points:
        label = _label(changes)
        if progress:
            print(f"== sweep point: {label}", flush=True)
        point = dataclasses.replace(config, world=dataclasses.replace(config.world, **changes))
        summary = run_demo(os.path.join(out, label.replace(" ", "-").replace(",", "")), point, progress, plots=False)
        results.append({"label": label, "changes": changes, "results": summary["results"],
                        "world": summary["world"], "seconds": summary["seconds"]})
    demo_report.write_sweep(out, results)
    return results


def _label(changes: dict[str, Any]) -> str:
    objects = f"{changes['min_objects']} objects"
    attributes = changes.get("attributes")
    return objects if attributes is None else f"{objects}, {'+'.join(attributes)}"


def _pretrained_encoder(out: str, train_jsonl: str, config: PretrainConfig, progress: bool) -> str:
    """The world's encoder checkpoint, reused when this run folder already trained one with this config
    on the same train split (pretraining is the demo's longest stage)."""
    path = os.path.join(out, "encoder.pt")
    if os.path.exists(path) and os.path.exists(path + ".json"):
        with open(path + ".json") as f:
            made = json.load(f)
        if made.get("config") == dataclasses.asdict(config) and made.get("train_sha256") == file_sha256(train_jsonl):
            return path
    pretrain(train_jsonl, path, config, progress=progress)
    return path


def _encoder_request(checkpoint: str) -> EncoderRequest:
    # Projected tokens and value-path features: the pooled diagnostic needs them in the joint space.
    return EncoderRequest(ENCODER, checkpoint, image_tokens=("patches", "cls", "values"), projected=True)


def _untrained_methods(store_uri: str, config: DemoConfig) -> dict[str, dict[str, Any]]:
    store = open_store(store_uri)
    space = store.space(ENCODER)
    encoder = encoder_for(space) if config.crop_styles else None  # crops are the only stage that runs it
    results: dict[str, dict[str, Any]] = {"global": {}, "maxsim (no training)": {}}
    for split in TEST_SPLITS:
        dataset = store.dataset(f"world-{split}")
        results["global"][split] = evaluate(space, dataset, build_head("global", Dims.of(space.spec)))
        results["maxsim (no training)"][split] = evaluate(
            space, dataset, build_head("maxsim", Dims.of(space.spec), {"learnable": False}))
        for source in config.pooled_sources:
            method = f"diagnostic, pooled {source}"
            results.setdefault(method, {})[split] = diagnose(space, dataset, pooled_regions(space, dataset, source))
        for style in config.crop_styles:
            results.setdefault(f"diagnostic, crops ({style})", {})[split] = diagnose(
                space, dataset, crop_regions(encoder, dataset, style))
    return results


def _train_heads(out: str, store_uri: str, config: DemoConfig, progress: bool,
                 results: dict[str, dict[str, Any]]) -> dict[str, str]:
    curves = {}
    for head, head_config in config.heads.items():
        run_dir = os.path.join(out, "runs", head)
        path = os.path.join(out, "runs", f"{head}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(head_config, f)
        reports = train(store_uri, "world-train", head, run_dir, eval_datasets=[f"world-{s}" for s in TEST_SPLITS],
                        config_path=path, progress=progress)
        results[head] = {split: reports[f"world-{split}"] for split in TEST_SPLITS}
        curves[head] = os.path.join(run_dir, "log.jsonl")
    return curves


def _headline(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    return {method: {split: demo_report.headline(report) for split, report in by_split.items()}
            for method, by_split in results.items()}


def _jsonable(config: DemoConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


@contextmanager
def _stage(name: str, timings: dict[str, float], progress: bool) -> Iterator[None]:
    """Announce a stage and record how long it took."""
    if progress:
        print(f"-- {name}", flush=True)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 1)
