"""`train`: fit a head on a dataset's items from the store, with periodic evaluation, JSONL logs and
resumable checkpoints. Reads only cached tensors: no encoder runs here."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import zlib
from collections.abc import Sequence
from contextlib import closing, nullcontext
from dataclasses import asdict
from typing import Any

import torch
from tqdm.auto import tqdm

from cache_schemas import ChunkCache, Location, SpaceEmbeddings, VlcacheError, open_store
from cache_schemas.errors import RERUN, after_full_disk, disk_full_as_error
from cache_schemas.output import no_empty_folder_left, run_folder, staged

from . import checkpoint
from .config import TrainConfig, load_config
from .data import BatchLoader, Examples, LoaderState
from .evaluate import evaluate, write_report
from .heads import HEADS, Dims, Head, build_head
from .health import HealthMonitor, TrainingError
from .objective import chance_loss, groups, loss


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VlcacheError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(device)


def train(store_uri: str, dataset: str, head_name: str, out: str, *, space_key: str | None = None,
          split: str | None = "train", eval_datasets: Sequence[str] = (), config_path: str | None = None,
          device: str = "auto", resume: bool = False, seed: int | None = None, progress: bool = True,
          storage_options: dict | None = None, cache: ChunkCache | None = None) -> dict[str, Any]:
    """Train until the configured step count; return the final evaluation reports by dataset.
    `seed` overrides the config's. Everything is checked (settings, store, datasets, space) before
    the run folder is written. `out` may be any fsspec URL (output.run_folder: with the store's
    options where it shares the store's filesystem); `cache` keeps a remote store's chunks locally."""
    if head_name not in HEADS:
        raise VlcacheError(f"unknown head {head_name!r}; heads: {', '.join(HEADS)}")
    if resume and seed is not None:
        raise VlcacheError("--seed cannot change a resumed run; it continues with the seed it started with")
    folder = run_folder(out, store_uri, storage_options, write=True)
    run = _resume(folder, head_name) if resume else _new_run(folder, head_name, config_path, seed)
    cfg = TrainConfig.from_json(run["train"])
    store = open_store(store_uri, storage_options=storage_options, cache=cache)
    space = store.space_or_only(space_key)
    if resume:
        run["checkpoint"].check_space(space)
    examples = Examples.from_dataset(space, store.dataset(dataset), split)
    evals = {name: store.dataset(name) for name in eval_datasets}  # unknown names fail before training
    if cfg.hard_negatives and not examples.has_negative_captions:
        raise VlcacheError(f"dataset {dataset} has no negative captions, and {head_name} trains on hard negatives; "
                           "set \"hard_negatives\": false under \"train\" in --config to train on in-batch negatives")
    torch_device = resolve_device(device)
    torch.manual_seed(cfg.seed)
    head = build_head(head_name, Dims.of(space.spec), run["head_config"]).to(torch_device)
    if not head.trainable:
        raise VlcacheError(f"head {head_name} has nothing to train; evaluate it with vlcache eval")
    optimizer, scheduler = _optimizer(head, cfg)
    step, loader_state = 0, LoaderState()
    if resume:
        step, loader_state = _restore(run["checkpoint"], head, optimizer, scheduler)
    loader = BatchLoader(space, examples, head.needs, cfg.batch_size, cfg.shuffle_buffer, cfg.seed,
                         pin_memory=torch_device.type == "cuda", state=loader_state, resident_mb=cfg.resident_mb,
                         device=torch_device)
    state = {"head": head_name, "head_config": head.config.to_json(), "train": cfg.to_json(), "space_key": space.key,
             "store": store_uri, "dataset": dataset, "split": split, "eval_datasets": list(eval_datasets),
             "parameters": head.n_parameters(), "items": len(examples)}
    then = _after_full_disk(folder, step if resume else None, resume, seed)
    with no_empty_folder_left(folder):  # past its first log line, the folder holds the run
        folder.ensure_writable("--out")
        log = _Log(folder, then)
        if step == 0:
            log.write({"event": "start", **state})
    monitor = HealthMonitor()
    reports: dict[str, Any] = {}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if torch_device.type == "cuda" else nullcontext()
    head.train()
    # closing(): the prefetch thread stops with the loop, also when an error leaves it (a daemon
    # thread killed at exit mid-read aborts the interpreter).
    with tqdm(total=cfg.steps, initial=step, desc=f"training {head_name}", disable=not progress) as bar, \
            closing(iter(loader)) as batches:
        for batch in batches:
            if step >= cfg.steps:
                break
            scoring = groups(batch, cfg.in_batch_negatives, step_generator(cfg.seed, step))
            chance = chance_loss(scoring)
            with amp:
                value = loss(head, batch.to(torch_device), scoring.to(torch_device))
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            norm = torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            try:
                monitor.observe(step + 1, value.item(), float(norm), chance)
            except TrainingError as exc:
                log.write({"event": "stopped", "step": step + 1, "reason": str(exc)})
                raise
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                bar.set_postfix(loss=f"{value.item():.3f}", chance=f"{chance:.3f}")
                log.write({"step": step, "loss": value.item(), "chance_loss": chance, "lr": scheduler.get_last_lr()[0],
                           "grad_norm": float(norm), "epoch": batch.epoch,
                           "batch_crc": zlib.crc32(batch.examples.tobytes())})  # the data order, checkable
            health = monitor.health()
            if evals and (step % cfg.eval_every == 0 or step == cfg.steps):
                reports = _evaluate(space, evals, head, torch_device, cfg, health.to_json())
                headlines = {n: _headline(r) for n, r in reports.items()}
                log.write({"step": step, "eval": headlines})
                if progress:  # the bar shows the loss; the evaluations would otherwise reach only the log
                    bar.write(_eval_line(step, cfg.steps, headlines), file=sys.stderr)
                head.train()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                with disk_full_as_error(folder.url(checkpoint.folder_of(step)), then):
                    checkpoint.save(folder, head, _training_state(optimizer, scheduler),
                                    {**state, "step": step, "health": health.to_json(),
                                     "loader": asdict(LoaderState(batch.epoch, batch.position + 1))})
                then = log.then = _after_full_disk(folder, step, resume, seed)
                log.flush()  # a resumed run's log then reaches its checkpoint, on an object store too
    if evals and resume and run["checkpoint"].state["step"] >= cfg.steps:
        # resumed at its last step: the reports a full disk kept from being published
        reports = _evaluate(space, evals, head, torch_device, cfg, run["checkpoint"].state["health"])
    with disk_full_as_error(folder.child("eval").uri, then), staged(folder.child("eval")) as evals_out:
        for name, report in reports.items():
            write_report(report, os.path.join(evals_out, name))
    log.write({"event": "end", "step": step, "health": monitor.health().to_json()})
    return reports


def _after_full_disk(folder: Location, saved: int | None, resumed: bool, seed: int | None) -> str:
    """What a run stopped by a full disk says to do: with --resume from its checkpoint of step `saved`,
    naming it; before its first, the same command again."""
    kept = None if saved is None else f"its checkpoint of step {saved} ({checkpoint.folder_of(saved)})"
    return after_full_disk(folder.uri, kept, resumed, seed is not None)


def _evaluate(space: SpaceEmbeddings, evals: dict[str, Any], head: Head, device: torch.device, cfg: TrainConfig,
              training: dict[str, Any]) -> dict[str, Any]:
    """The reports of `evals`, each with the run's health (`training`) so far."""
    reports = {name: evaluate(space, d, head, device=str(device), retrieval_k=cfg.retrieval_k)
               for name, d in evals.items()}
    for report in reports.values():
        report["training"] = training
    return reports


def _new_run(folder: Location, head_name: str, config_path: str | None, seed: int | None) -> dict[str, Any]:
    """The run's settings from the defaults and --config, checked before anything is read or written."""
    if checkpoint.has_checkpoint(folder):
        raise VlcacheError(f"{folder.uri} already holds a run; pass --resume to continue it, or choose another --out")
    head_config, cfg = load_config(head_name, config_path)
    HEADS[head_name].Config.from_json(head_config)
    return {"head_config": head_config, "train": {**cfg.to_json(), **({} if seed is None else {"seed": seed})}}


def _resume(folder: Location, head_name: str) -> dict[str, Any]:
    ckpt = checkpoint.load(folder, with_optimizer=True)
    if ckpt.state["head"] != head_name:
        raise VlcacheError(f"{folder.uri} holds a {ckpt.state['head']} run, not {head_name}")
    return {"head_config": ckpt.state["head_config"], "train": ckpt.state["train"], "checkpoint": ckpt}


def _optimizer(head: Head, cfg: TrainConfig):
    # No weight decay on gains, biases, embeddings and scales (1-d parameters and position tables).
    decay = [p for n, p in head.named_parameters() if p.ndim >= 2 and "pos" not in n]
    no_decay = [p for n, p in head.named_parameters() if not (p.ndim >= 2 and "pos" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.warmup_steps, cfg.steps))


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The learning rate's factor at `step`: linear warm-up over `warmup` steps, then cosine decay to
    zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _training_state(optimizer, scheduler) -> dict[str, Any]:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng}


def _restore(ckpt: checkpoint.Checkpoint, head: Head, optimizer, scheduler) -> tuple[int, LoaderState]:
    head.load_state_dict(ckpt.head_tensors)
    optimizer.load_state_dict(ckpt.optimizer["optimizer"])
    scheduler.load_state_dict(ckpt.optimizer["scheduler"])
    torch.set_rng_state(ckpt.optimizer["rng"]["cpu"])
    if "cuda" in ckpt.optimizer["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt.optimizer["rng"]["cuda"])
    return ckpt.state["step"], LoaderState(**ckpt.state["loader"])


def step_generator(seed: int, step: int) -> torch.Generator:
    """In-batch negatives drawn from (seed, step) alone, so a resumed run draws the same ones."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _headline(report: dict[str, Any]) -> dict[str, float]:
    out = {}
    if "caption_accuracy" in report:
        out["accuracy"] = report["caption_accuracy"]["by_subset"]["all"]
        out["macro"] = report["caption_accuracy"]["macro"]
    if "bivlc" in report:
        out["group"] = report["bivlc"]["group"]["by_type"]["all"]
    if "retrieval" in report:
        out["t2i_r1"] = report["retrieval"]["t2i_r1"]
    return out


_HEADLINE_NAMES = {"accuracy": "accuracy", "macro": "macro", "group": "BiVLC group", "t2i_r1": "T2I R@1"}


def _eval_line(step: int, steps: int, headlines: dict[str, dict[str, float]]) -> str:
    """A periodic evaluation in one console line: `step 200/1000 eval: test accuracy 64.5%, macro 62.0%; ...`."""
    return f"step {step}/{steps} eval: " + "; ".join(
        f"{name} " + ", ".join(f"{_HEADLINE_NAMES[k]} {100 * v:.1f}%" for k, v in values.items())
        for name, values in headlines.items())


def _append(path: str, data: bytes, then: str = RERUN) -> None:
    """`data` at the end of the file, or the file as it was (none, if there was none): a full disk leaves
    no half a line, and says `then`."""
    with disk_full_as_error(path, then), open(path, "ab", buffering=0) as f:
        end = f.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[f.write(view):]
        except OSError:
            f.truncate(end)
            if not end:
                os.unlink(path)
            raise


class _Log:
    """log.jsonl, appended to in place on a local disk. An object store has no appends: there the whole
    file is rewritten at each event (start, stop, end), each checkpoint, and at most FLUSH_SECONDS apart."""

    NAME, FLUSH_SECONDS = "log.jsonl", 30.0

    def __init__(self, run: Location, then: str = RERUN):
        self.run = run
        self.then = then  # what a full disk met writing it says to do
        self.lines = [] if run.is_local or not run.exists(self.NAME) else [run.read_bytes(self.NAME).decode()]
        self.flushed = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **record}) + "\n"
        if self.run.is_local:
            _append(self.run.path(self.NAME), line.encode(), self.then)
            return
        self.lines.append(line)
        if "event" in record or time.monotonic() - self.flushed >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.run.is_local:
            self.run.write_bytes(self.NAME, "".join(self.lines).encode())
            self.flushed = time.monotonic()
