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
from pipeline.cluster import ClusterConfig, start_workers
from pipeline.encoders import EncoderRequest, describe, file_sha256
from pipeline.extract import ExtractOptions, extract
from pipeline.finetune.config import FinetuneConfig
from trainer.diagnostic import diagnose_with
from trainer.diagnostic.crops import encoder_for
from trainer.evaluate import evaluate
from trainer.heads import Dims, build_head
from trainer.train import train

from . import report as demo_report
from .baselines import finetuned_encoders
from .control import build_control
from .control import scaled as control_world
from .parallel import Runner, side_by_side
from .probe import run_probes
from .results import Results
from .world import WorldConfig, generate
from .world.pretrain import PretrainConfig, pretrain

SPLITS = ("train", "test_id", "test_ood")
TEST_SPLITS = ("test_id", "test_ood")
ENCODER = "vlcache-world"


# The world encoders the demo can study, by name: (world, pretraining). bench/README.md ("Looking for a
# world encoder that is bag-of-words as CLIP is") has the study that chose them.
WORLD_ENCODERS: dict[str, tuple[WorldConfig, PretrainConfig]] = {
    # Pretrained on web-style alt-text (some objects, some attributes): global cosine at chance on
    # attribute swaps, replaced content learned to 90% or more, as CLIP is on SugarCrepe. The default.
    "bag-of-words": (WorldConfig(n_train=8000, n_test=500, image_size=64, alt_text=True),
                     PretrainConfig(steps=1000, warmup=100, caption_field="alt_text")),
    # Pretrained on full captions for half the updates: its global cosine binds, weakly (80-87% on swaps).
    "binding": (WorldConfig(n_train=8000, n_test=500, image_size=64), PretrainConfig()),
}


@dataclass(frozen=True)
class DemoConfig:
    world_encoder: str = "bag-of-words"  # the WORLD_ENCODERS entry `world` and `pretrain` come from
    world: WorldConfig = WORLD_ENCODERS["bag-of-words"][0]
    pretrain: PretrainConfig = WORLD_ENCODERS["bag-of-words"][1]
    # The positive control (workflows/control): smaller than its default, the same test size.
    control: WorldConfig = control_world(n_train=2000, n_test=500)
    # Every trained head and fine-tuned encoder is trained once per seed; results are mean and
    # standard error over them.
    seeds: tuple[int, ...] = (0, 1, 2)
    # Training settings sized for two CPU cores (the heads' own settings are the library defaults):
    # 100 steps of 32 items, a hard negative and 4 in-batch negatives each (no retrieval: the study is
    # about hard negatives). Runs start in this order, side by side: the costliest first.
    heads: dict[str, dict] = field(default_factory=lambda: {
        name: {"train": {"steps": 100, "batch_size": 32, "warmup_steps": 10, "in_batch_negatives": 4,
                         "retrieval_k": 0}} for name in ("tflocal", "maxsim", "global-mlp")})
    # The fine-tuning baselines (workflows.baselines) on the world's training split, plain and with its
    # hard negatives; None leaves them out. The budget of a head, at a learning rate for a small encoder.
    finetune: FinetuneConfig | None = FinetuneConfig(steps=100, batch_size=32, lr=1e-4, warmup_steps=10,
                                                     checkpoint_every=100)
    # The diagnostic's region sources (trainer.diagnostic.SOURCES). Pooled cached features cost no
    # encoder pass; add "crops" (each box encoded on a canvas, the classic source; about 40 s) or
    # "crops-resize" (each box resized to the full input: a scale the tower never saw).
    region_sources: tuple[str, ...] = ("patches", "values")

    @classmethod
    def for_world_encoder(cls, name: str) -> DemoConfig:
        world, pretrain = WORLD_ENCODERS[name]
        return cls(world_encoder=name, world=world, pretrain=pretrain)

    def small(self) -> DemoConfig:
        """A two-minute version (on 2 cores), for tests and smoke runs."""
        return self._scaled(n_train=200, n_test=50, pretrain_steps=30, head_steps=20)

    def for_sweep(self) -> DemoConfig:
        """Each sweep point at about half the demo's cost."""
        return self._scaled(n_train=4000, n_test=300, pretrain_steps=self.pretrain.steps * 3 // 5, head_steps=100)

    def _scaled(self, n_train: int, n_test: int, pretrain_steps: int, head_steps: int) -> DemoConfig:
        """Smaller worlds; heads and fine-tuning at `head_steps`, pretraining at `pretrain_steps`."""
        heads = {name: {**cfg, "train": {**cfg["train"], "steps": head_steps,
                                         "warmup_steps": min(cfg["train"]["warmup_steps"], head_steps // 5)}}
                 for name, cfg in self.heads.items()}
        finetune = self.finetune and dataclasses.replace(
            self.finetune, steps=head_steps, warmup_steps=min(self.finetune.warmup_steps, head_steps // 5),
            checkpoint_every=head_steps)
        warmup = min(self.pretrain.warmup, pretrain_steps // 5)
        return dataclasses.replace(
            self, world=dataclasses.replace(self.world, n_train=n_train, n_test=n_test), heads=heads,
            finetune=finetune,
            control=dataclasses.replace(self.control, n_train=min(n_train, self.control.n_train), n_test=n_test),
            pretrain=dataclasses.replace(self.pretrain, steps=pretrain_steps, warmup=warmup))


def run_demo(out: str, config: DemoConfig = DemoConfig(), progress: bool = True, plots: bool = True,
             control: Results | None = None) -> dict[str, Any]:
    """The study; `control`: positive-control results to reuse (a sweep measures them once)."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    log = functools.partial(_stage, timings=timings, progress=progress)
    for stale in ("store", "runs", "control"):  # results are recomputed; only the encoder checkpoint is reused
        shutil.rmtree(os.path.join(out, stale), ignore_errors=True)
    with start_workers(ClusterConfig()) as workers, side_by_side() as run:
        if control is None:  # measured first: without it no result below means anything
            with log("positive control: can each head learn what is known to be in the tokens?"):
                control = run_control(os.path.join(out, "control"), config, workers, run, progress)
            if progress:
                print("\n".join(demo_report.control_verdicts(control)).replace("**", ""), flush=True)
        with log("generate the world"):
            world = generate(os.path.join(out, "world"), config.world)
        with log("pretrain the encoder"):
            request = _encoder_request(_pretrained_encoder(out, world["jsonl"]["train"], config.pretrain, progress))
        with log("extract embeddings"):
            store = os.path.join(out, "store")
            for split in SPLITS:
                _extract(world, split, request, store, workers)
        with log("probe what the frozen tokens carry"):
            probes = {"world": run_probes(store, os.path.join(out, "world"))}
            if os.path.exists(os.path.join(out, "control", "store")):  # built by this run, not passed in
                probes["control"] = run_probes(os.path.join(out, "control", "store"),
                                               os.path.join(out, "control", "world"), "control")
        results = Results(counts=world["counts"])
        with log("zero-shot global cosine and the diagnostic"):
            _untrained_methods(store, config, results)
        if progress:  # the first answer, before any head is trained
            print("\n".join(demo_report.encoder_verdicts(results)).replace("**", ""), flush=True)
        with log("train heads"):
            _train_heads(os.path.join(out, "runs"), store, "world", config, run, progress, results)
        if config.finetune:
            with log("fine-tune the encoder (the baselines)"):
                _finetuning_baselines(os.path.join(out, "runs"), world, request, store, config, workers, run,
                                      progress, results)
    summary = {"config": _jsonable(config), "timings": timings, "seconds": time.perf_counter() - started,
               "probes": probes}
    demo_report.write(out, summary, results, control, world_dir=os.path.join(out, "world"), plots=plots)
    if progress:
        print("\n".join(demo_report.claim_verdicts(results, control)).replace("**", ""), flush=True)
    return {**summary, "results": results.headlines(), "control": control.headlines(), "world": world["counts"],
            "at_chance": {m: results.at_chance(m) for m in results.methods}}


def run_control(out: str, config: DemoConfig, workers, run: Runner, progress: bool) -> Results:
    """Every method on the positive control: global cosine, and each trained head over the seeds."""
    built = build_control(out, config.control, workers=workers)
    results = Results(counts=built.world["counts"])
    store = open_store(built.store)
    space = store.space(store.space_keys()[0])
    for split in TEST_SPLITS:
        results.add("global", split, evaluate(space, store.dataset(f"control-{split}"),
                                              build_head("global", Dims.of(space.spec))))
    _train_heads(os.path.join(out, "runs"), built.store, "control", config, run, progress, results)
    return results


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
    with start_workers(ClusterConfig()) as workers, side_by_side() as run:
        if progress:
            print("== positive control (once, for every point)", flush=True)
        control = run_control(os.path.join(out, "control"), config, workers, run, progress)
    results = []
    for changes in points:
        label = _label(changes)
        if progress:
            print(f"== sweep point: {label}", flush=True)
        point = dataclasses.replace(config, world=dataclasses.replace(config.world, **changes))
        summary = run_demo(os.path.join(out, label.replace(" ", "-").replace(",", "")), point, progress, plots=False,
                           control=control)
        results.append({"label": label, "changes": changes, "results": summary["results"], "world": summary["world"],
                        "at_chance": summary["at_chance"], "seconds": summary["seconds"]})
    demo_report.write_sweep(out, results, control)
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


def _extract(world: dict[str, Any], split: str, request: EncoderRequest, store: str, workers) -> None:
    extract(world["jsonl"][split], "bivlc", f"world-{split}", request, store,
            options=ExtractOptions(rows_per_shard=1024, progress=False), workers=workers)


def _finetuning_baselines(runs: str, world: dict[str, Any], request: EncoderRequest, store_uri: str,
                          config: DemoConfig, workers, run: Runner, progress: bool, results: Results) -> None:
    """The encoder fine-tuned on the world's training split per baseline and seed (side by side); each
    result extracted on the test splits into its own space and scored there by global cosine."""
    for method, seed, tuned, record in finetuned_encoders(store_uri, "world-train", request, runs, config.finetune,
                                                          config.seeds, progress=False, run=run):
        _say(progress, f"{method}, seed {seed}: {record['health']['status']}")
        for split in TEST_SPLITS:
            _extract(world, split, tuned, store_uri, workers)
        store = open_store(store_uri)
        space = store.space(describe(tuned).key)
        for split in TEST_SPLITS:
            report = evaluate(space, store.dataset(f"world-{split}"), build_head("global", Dims.of(space.spec)))
            results.add(method, split, {**report, "training": record["health"]})


def _untrained_methods(store_uri: str, config: DemoConfig, results: Results) -> None:
    store = open_store(store_uri)
    space = store.space(ENCODER)
    crops = any(s.startswith("crops") for s in config.region_sources)
    encoder = encoder_for(space) if crops else None  # crops are the only stage that runs it
    for split in TEST_SPLITS:
        dataset = store.dataset(f"world-{split}")
        results.add("global", split, evaluate(space, dataset, build_head("global", Dims.of(space.spec))))
        results.add("maxsim (no training)", split,
                    evaluate(space, dataset, build_head("maxsim", Dims.of(space.spec), {"learnable": False})))
        for source in config.region_sources:
            report = diagnose_with(space, dataset, source, encoder=encoder)
            results.add(report["head"], split, report)


def _train_heads(out: str, store_uri: str, prefix: str, config: DemoConfig, run: Runner, progress: bool,
                 results: Results) -> None:
    """Each configured head, once per seed (side by side), on `<prefix>-train`, evaluated on the test splits."""
    os.makedirs(out, exist_ok=True)
    jobs = [(head, seed, os.path.join(out, f"{head}-seed{seed}")) for head in config.heads for seed in config.seeds]
    for head, seed, run_dir in jobs:
        with open(run_dir + ".json", "w") as f:
            json.dump({**config.heads[head], "train": {**config.heads[head]["train"], "seed": seed}}, f)
    calls = [dict(store_uri=store_uri, dataset=f"{prefix}-train", head_name=head, out=run_dir,
                  config_path=run_dir + ".json", progress=False, eval_datasets=[f"{prefix}-{s}" for s in TEST_SPLITS])
             for head, _, run_dir in jobs]
    for (head, seed, run_dir), reports in zip(jobs, run(train, calls)):
        scores = [100 * reports[f"{prefix}-{s}"]["caption_accuracy"]["by_subset"]["all"] for s in TEST_SPLITS]
        _say(progress, f"{head}, seed {seed}: {scores[0]:.1f} / {scores[1]:.1f}% of captions over their negatives "
                       "(in-domain / out of domain)")
        for split in TEST_SPLITS:
            results.add(head, split, reports[f"{prefix}-{split}"], log=os.path.join(run_dir, "log.jsonl"))


def _say(progress: bool, line: str) -> None:
    if progress:
        print(f"   {line}", flush=True)


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
