"""The fine-tuning loop: batches of a dataset's items, read and decoded as `extract` reads them, through
both towers, scored in the groups heads train on."""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from cache_schemas import DatasetTables, VlcacheError, open_store
from cache_schemas.errors import after_full_disk, disk_full_as_error
from cache_schemas.location import atomic_file
from cache_schemas.output import no_empty_folder_left, run_folder
from trainer.data import Batch, batch_rows
from trainer.health import HealthMonitor
from trainer.objective import Groups, chance_loss, group_loss, groups
from trainer.train import resolve_device, step_generator, warmup_cosine

from ..encoders import EncoderRequest, file_sha256
from ..encoders.openclip import OpenClipEncoder, describe_model, text_features
from ..images import ImageError, decode, read_bytes
from ..readers import SourceOptions
from .config import FinetuneConfig

MAX_LOGIT_SCALE = math.log(100)  # open_clip_train's clamp: keeps the temperature from collapsing
MODEL_FILE, STATE_FILE = "model.pt", "state.pt"


@dataclass(frozen=True)
class Pairs:
    """A dataset's training items, as indices into its image URIs and its texts."""

    uris: list[str]
    texts: list[str]
    image: np.ndarray  # (N,) item -> image
    caption: np.ndarray  # (N,) item -> text
    negatives: np.ndarray  # (N, K) hard negative captions, -1 = none
    negative_images: np.ndarray  # (N, J) hard negative images, -1 = none

    def __len__(self) -> int:
        return len(self.image)

    @classmethod
    def of(cls, dataset: DatasetTables, split: str | None, negatives: bool = True) -> Pairs:
        """The items of `split` (None: all) whose image was read; without their hard negatives unless
        `negatives`."""
        items = dataset.items
        if split is not None:
            items = items.filter(pc.equal(items["split"], split))
        images, texts = dataset.images, dataset.texts
        image = _index(items["image"], images["hash"])
        readable = image >= 0  # items whose image failed to load have no row
        items, image = items.filter(pa.array(readable)), image[readable]
        if items.num_rows == 0:
            raise VlcacheError(f"dataset {dataset.name} has no item with a readable image"
                               + (f" in split {split!r}" if split else ""))
        none = np.full((items.num_rows, 1), -1, np.int64)
        return cls(images["uri"].to_pylist(), texts["text"].to_pylist(),
                   image, _index(items["caption"], texts["hash"]),
                   _index_lists(items["negative_captions"], texts["hash"]) if negatives else none,
                   _index_lists(items["negative_images"], images["hash"]) if negatives else none)

    @property
    def has_negatives(self) -> bool:
        return bool((self.negatives >= 0).any())


def _index(values: pa.ChunkedArray, keys: pa.ChunkedArray) -> np.ndarray:
    return pc.index_in(values, value_set=keys.combine_chunks()).fill_null(-1).to_numpy().astype(np.int64)


def _index_lists(lists: pa.ChunkedArray, keys: pa.ChunkedArray) -> np.ndarray:
    """(N, width) indices of each list's values, padded with -1 (width 1 for no values at all)."""
    lists = lists.combine_chunks()
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy()
    out = np.full((len(lists), max(1, int(lengths.max(initial=0)))), -1, np.int64)
    flat = _index(pa.chunked_array([pc.list_flatten(lists)]), keys)
    rows = np.repeat(np.arange(len(lists)), lengths)
    out[rows, np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)] = flat
    return out


def finetune(store_uri: str, dataset: str, request: EncoderRequest, out: str, *,
             config: FinetuneConfig = FinetuneConfig(), split: str | None = "train", device: str = "auto",
             resume: bool = False, progress: bool = True, storage_options: dict | None = None,
             source_options: dict | None = None) -> dict[str, Any]:
    """Fine-tune `request`'s encoder on `dataset`; write `<out>/model.pt`. Returns the run's record
    (also `<out>/model.pt.json`): the settings, the losses' health, and the extract arguments that
    read the result. Everything is checked before the first image is read. `source_options`: fsspec
    options for the filesystem the images are on (as extract was given them); written nowhere."""
    state = _resume(out, request, config) if resume else None
    if not resume and os.path.exists(os.path.join(out, STATE_FILE)):
        raise VlcacheError(f"{out} already holds a fine-tuning run; pass --resume to continue it, or choose another "
                           "--out")
    folder = run_folder(out, write=True)  # made by the first save: a run that saves nothing leaves no folder
    extract_model = _extract_model(request)
    sources = SourceOptions(source_options)
    pairs = Pairs.of(open_store(store_uri, storage_options=storage_options).dataset(dataset), split,
                     config.hard_negatives)
    if config.hard_negatives and not pairs.has_negatives:
        raise VlcacheError(f"dataset {dataset} has no negative captions to fine-tune against; drop --hard-negatives")
    torch_device = resolve_device(device)
    encoder = OpenClipEncoder(describe_model(request), request.pretrained, str(torch_device))
    model = encoder.model
    trained = _unfreeze(model, config.blocks)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, config.warmup_steps, config.steps))
    step = saved = 0  # saved: the step of the last state.pt
    if state is not None:
        step = saved = _restore(state, model, optimizer, scheduler)
    monitor, losses = HealthMonitor(), list(state["losses"]) if state else []
    monitor.recent.extend(state["health_window"] if state else [])
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if torch_device.type == "cuda" else nullcontext()
    model.train()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as decoders, \
            tqdm(total=config.steps, initial=step, desc="fine-tuning", disable=not progress) as bar:
        while step < config.steps:
            batch = _batch(pairs, config, step)
            scoring = groups(batch, config.batch_size - 1, step_generator(config.seed, step))
            uris = [pairs.uris[i] for i in batch.image_rows.tolist()]
            pixels = torch.stack(list(decoders.map(lambda uri: _pixels(encoder, uri, sources), uris)))
            ids, n_tokens = encoder.tokenize([pairs.texts[i] for i in batch.text_rows.tolist()])
            with amp:
                value = _loss(model, encoder.normalised(pixels.to(torch_device)), ids.to(torch_device), n_tokens,
                              scoring)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            norm = torch.nn.utils.clip_grad_norm_(trained, config.grad_clip)
            monitor.observe(step + 1, value.item(), float(norm), chance_loss(scoring))  # raises before a bad step
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            step += 1
            losses.append(value.item())
            bar.update(1)
            bar.set_postfix(loss=f"{value.item():.3f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                with no_empty_folder_left(folder), \
                        disk_full_as_error(os.path.join(out, STATE_FILE), _after_full_disk(out, saved, resume)):
                    _save_state(out, model, optimizer, scheduler, step, request, config, losses, monitor)
                saved = step
    with disk_full_as_error(os.path.join(out, MODEL_FILE), _after_full_disk(out, saved, resume)):
        return _finish(out, model, request, extract_model, config, dataset, split, monitor, losses,
                       time.perf_counter() - started)


def _after_full_disk(out: str, saved: int, resumed: bool) -> str:
    """How a run stopped by a full disk goes on: before its first save, started again; after it, resumed."""
    return after_full_disk(out, f"its {STATE_FILE} of step {saved}" if saved else None, resumed)


def _batch(pairs: Pairs, config: FinetuneConfig, step: int) -> Batch:
    """Step `step`'s items: full batches of a permutation drawn from (seed, epoch), so a resumed run
    takes the same batches."""
    per_epoch = max(1, len(pairs) // config.batch_size)
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(len(pairs))
    index = order[position * config.batch_size:(position + 1) * config.batch_size]
    return Batch(examples=index, epoch=epoch, position=position, images={}, texts={}, **batch_rows(pairs, index))


def _pixels(encoder: OpenClipEncoder, uri: str, sources: SourceOptions) -> torch.Tensor:
    """An image's pixels, read as extract read them; the source's filesystem refusing us is one line
    (an UnreachableError naming --source-options)."""
    try:
        return encoder.preprocess(decode(read_bytes(uri, sources), encoder.image_size))
    except ImageError as exc:
        raise VlcacheError(f"cannot fine-tune on {uri}: it no longer reads ({exc}); run vlcache extract again to "
                           "record it as failed") from None


def _loss(model: torch.nn.Module, pixels: torch.Tensor, ids: torch.Tensor, n_tokens: np.ndarray,
          scoring: Groups) -> torch.Tensor:
    """The groups' cross-entropy over the encoder's scaled cosine similarities: the loss heads train on."""
    images = model.encode_image(pixels, normalize=True)
    texts = text_features(model, ids, n_tokens)
    scoring = scoring.to(images.device)
    pairs = images[scoring.image[scoring.valid]] * texts[scoring.text[scoring.valid]]
    return group_loss(model.logit_scale.exp() * pairs.sum(-1).float(), scoring)


def _unfreeze(model: torch.nn.Module, blocks: int) -> list[torch.nn.Parameter]:
    """Every parameter, or (blocks > 0) the last `blocks` blocks of each tower and what follows them
    (final norm, projection) and the temperature: open_clip's own LiT-style locks, whose last two
    groups are [last block, final norm] and the projection."""
    model.requires_grad_(True)
    if blocks:
        model.lock_image_tower(unlocked_groups=blocks + 1)
        model.lock_text_tower(unlocked_layers=blocks + 1)
    return [p for p in model.parameters() if p.requires_grad]


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # As train's optimizer: no decay on gains, biases, embeddings and the temperature.
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)], "weight_decay": 0.0}]


def _extract_model(request: EncoderRequest) -> str:
    """The model name `extract` must be given with the fine-tuned file: a pretrained tag's QuickGELU
    is part of the tag, not of the file."""
    tagged = request.pretrained is not None and not os.path.isfile(request.pretrained)
    if not (tagged and open_clip.get_pretrained_cfg(request.model, request.pretrained).get("quick_gelu")):
        return request.model
    name = f"{request.model}-quickgelu"
    if name not in open_clip.list_models():
        raise VlcacheError(f"{request.model} with --pretrained {request.pretrained} uses QuickGELU, and open_clip has "
                           f"no {name} config to extract the fine-tuned weights with")
    return name


def _save_state(out: str, model, optimizer, scheduler, step: int, request: EncoderRequest,
                config: FinetuneConfig, losses: list[float], monitor: HealthMonitor) -> None:
    """Written whole, then renamed over the last one: a run killed mid-save (or out of disk) resumes from the last."""
    with atomic_file(os.path.join(out, STATE_FILE)) as f:
        torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                    "request": asdict(request), "config": config.to_json(), "losses": losses,
                    "health_window": list(monitor.recent)}, f)


def _resume(out: str, request: EncoderRequest, config: FinetuneConfig) -> dict[str, Any]:
    path = os.path.join(out, STATE_FILE)
    if not os.path.exists(path):
        raise VlcacheError(f"--resume: {out} holds no fine-tuning run ({STATE_FILE} is missing)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    for what, was, now in (("encoder", state["request"], asdict(request)), ("settings", state["config"],
                                                                             config.to_json())):
        changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
        if changed:
            raise VlcacheError(f"--resume: the run in {out} was started with other {what} ({', '.join(changed)}); "
                               "resume with the same ones, or choose another --out")
    return state


def _restore(state: dict[str, Any], model, optimizer, scheduler) -> int:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def _finish(out: str, model, request: EncoderRequest, extract_model: str, config: FinetuneConfig, dataset: str,
            split: str | None, monitor: HealthMonitor, losses: list[float], seconds: float) -> dict[str, Any]:
    path = os.path.join(out, MODEL_FILE)
    with atomic_file(path) as f:
        torch.save(model.state_dict(), f)
    record = {"base": asdict(request), "dataset": dataset, "split": split, "config": config.to_json(),
              "health": monitor.health().to_json(), "seconds": round(seconds, 1),
              "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
              "sha256": file_sha256(path), "extract": {"model": extract_model, "pretrained": os.path.abspath(path)}}
    try:
        with atomic_file(f"{path}.json") as f:
            f.write(json.dumps(record, indent=2).encode())
    except Exception:  # a full disk: no model without its record (the run's state.pt stays, to --resume)
        os.unlink(path)
        raise
    return record


def extract_request(record: dict[str, Any], base: EncoderRequest) -> EncoderRequest:
    """The request that extracts a fine-tuning run's result: `base`'s tokens and dtype, the run's weights."""
    return replace(base, model=record["extract"]["model"], pretrained=record["extract"]["pretrained"])
