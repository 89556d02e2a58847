"""`pretrain`: a small CLIP trained from scratch on a world's (image, caption) pairs, for demos that
cannot download pretrained weights.

Only the positives are used (no negative captions or images) with open_clip's standard contrastive
loss, so whatever the model learns about binding comes from ordinary CLIP training, as it would for
a web-scale model. The train set is small: it is decoded once into RAM as uint8 pixels and token ids.
The checkpoint is a plain state_dict that `open_clip.create_model(model, pretrained=path)` loads;
`<path>.json` beside it records the config and stats that rebuild it."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision import transforms
from tqdm import tqdm

from cache_schemas import VlcacheError
from pipeline.encoders import file_sha256
from pipeline.encoders.openclip import text_features  # importing it registers the vlcache model configs
from trainer.train import warmup_cosine

MAX_LOGIT_SCALE = math.log(100)  # open_clip_train's clamp: keeps the temperature from collapsing


class PretrainConfigError(VlcacheError, ValueError):
    """A PretrainConfig that cannot run."""


@dataclass(frozen=True)
class PretrainConfig:
    # Defaults: ~4 minutes on 2 CPU cores for 8000 scenes at 64 px. By global cosine, replace-type
    # negatives are learned (96-98%) and attribute swaps less (79-87% in the demo); see
    # bench/README.md. Twice the updates at half the batch learned more than 250 x 128.
    model: str = "vlcache-world"
    steps: int = 500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50  # steps of linear warm-up before the cosine decay
    weight_decay: float = 0.1
    seed: int = 0
    threads: int | None = None  # torch intra-op threads while training; None keeps the current setting
    caption_field: str = "caption"  # the row field holding the training text

    def __post_init__(self) -> None:
        checks = [(self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
                  (self.batch_size >= 2, f"batch_size must be >= 2 (contrastive), got {self.batch_size}"),
                  (self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (0 <= self.warmup < self.steps, f"warmup must be in [0, steps), got {self.warmup}")]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise PretrainConfigError(f"invalid PretrainConfig: {problems[0]}")


@dataclass(frozen=True)
class TrainSet:
    pixels: torch.Tensor  # (N, 3, H, W) uint8, resized and cropped by the model's preprocessing
    tokens: torch.Tensor  # (N, context_length) int64
    lengths: torch.Tensor  # (N,) real tokens of each caption
    normalize: transforms.Normalize


def pretrain(train_jsonl: str, out_path: str, config: PretrainConfig = PretrainConfig(),
             progress: bool = False) -> dict[str, Any]:
    """Train `config.model` from scratch on the rows of `train_jsonl`; save its state_dict at
    `out_path`. Returns {"steps", "seconds" (training only), "final_loss" (mean of the last 20
    steps), "n_pairs", "params", "losses" (one per step)}."""
    with _threads(config.threads), torch.random.fork_rng(devices=[]):  # the caller's RNG state is left alone
        torch.manual_seed(config.seed)
        model = _random_init(config.model)
        data = _train_set(train_jsonl, config.model, model.visual.preprocess_cfg, config.caption_field)
        start = time.perf_counter()
        losses = _train(model, data, config, progress)
        seconds = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    torch.save(model.state_dict(), out_path)
    stats = {"steps": config.steps, "seconds": round(seconds, 1), "final_loss": float(np.mean(losses[-20:])),
             "n_pairs": len(data.tokens), "params": sum(p.numel() for p in model.parameters())}
    with open(f"{out_path}.json", "w", encoding="utf-8") as f:
        json.dump({"config": asdict(config), "train_jsonl": os.path.abspath(train_jsonl),
                   "train_sha256": file_sha256(train_jsonl), "stats": stats}, f, indent=2)
    return {**stats, "losses": losses}


def _random_init(model: str) -> torch.nn.Module:
    logging.disable(logging.WARNING)  # open_clip warns that the weights are random: that is the point
    try:
        return open_clip.create_model(model, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_set(train_jsonl: str, model: str, preprocess_cfg: dict[str, Any],
                   caption_field: str = "caption") -> TrainSet:
    """Every row's image through the model's eval preprocessing (no crops or flips: a crop could
    drop an object the caption names, a flip would falsify left/right), kept as uint8."""
    with open(train_jsonl, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    missing = [r.get("item_id", i) for i, r in enumerate(rows) if caption_field not in r]
    if missing:
        raise VlcacheError(f"{train_jsonl}: rows without a {caption_field!r} field, e.g. {missing[0]}")
    to_unit, normalize = _split_preprocess(preprocess_cfg)
    root = os.path.dirname(os.path.abspath(train_jsonl))
    pixels = torch.stack([_decode(os.path.join(root, r["image"]), to_unit) for r in rows])
    tokens = _tokens(model, [r[caption_field] for r in rows])
    return TrainSet(pixels, tokens, (tokens != 0).sum(dim=1), normalize)


def _tokens(model: str, texts: list[str]) -> torch.Tensor:
    """Token ids; a text that fills the whole context may have been cut, which the tokenizer does silently."""
    tokens = open_clip.get_tokenizer(model)(texts)  # (N, context_length), padded with 0
    full = (tokens[:, -1] != 0).nonzero().flatten()
    if len(full):
        raise VlcacheError(f"{len(full)} caption(s) fill {model}'s context of {tokens.shape[1]} tokens, e.g. "
                           f"{texts[int(full[0])]!r}; raise text_cfg.context_length in its model config")
    return tokens


def _split_preprocess(preprocess_cfg: dict[str, Any]) -> tuple[transforms.Compose, transforms.Normalize]:
    """open_clip's eval transform, split before its Normalize so pixels can be stored as uint8."""
    cfg = PreprocessCfg(**preprocess_cfg)
    steps = image_transform_v2(cfg, is_train=False).transforms
    if not isinstance(steps[-1], transforms.Normalize):
        raise VlcacheError(f"expected open_clip's transform to end with Normalize, got {steps[-1]}")
    return transforms.Compose(steps[:-1]), steps[-1]


def _decode(path: str, to_unit: transforms.Compose) -> torch.Tensor:
    with Image.open(path) as image:
        unit = to_unit(image)  # ToTensor's k/255: exact in uint8
    return (unit * 255).round().to(torch.uint8)


def _train(model: torch.nn.Module, data: TrainSet, config: PretrainConfig, progress: bool) -> list[float]:
    """AdamW with linear warm-up then cosine decay, over seeded shuffled epochs; the loss per step."""
    model.train()
    optimizer = _optimizer(model, config)
    loss_fn = ClipLoss()
    batches = _batches(len(data.tokens), config.batch_size, config.seed)
    losses = []
    for step in tqdm(range(config.steps), disable=not progress, desc="pretrain"):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warmup_cosine(step, config.warmup, config.steps)
        index = next(batches)
        images = data.normalize(data.pixels[index].float() / 255)  # (B, 3, H, W)
        loss = loss_fn(model.encode_image(images, normalize=True),
                       text_features(model, data.tokens[index], data.lengths[index]), model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        losses.append(loss.item())
    model.eval()
    return losses


def _optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    """open_clip_train's split: no weight decay on gains, biases or the temperature."""
    def exempt(name: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if exempt(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not exempt(n, p)], "weight_decay": config.weight_decay}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def _batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Indices of full batches from seeded permutations, epoch after epoch (the tail of each
    epoch is dropped so every batch has the same size, hence the same number of negatives)."""
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start:start + size]
