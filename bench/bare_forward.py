"""The baselines extraction is measured against: open_clip alone, no vlcache import, nothing stored.

    bare_forward.py WORK --model M --device D            the unique images and texts, batched, as a
                                                         careful script would (decode one batch ahead
                                                         in threads, text trimmed to the batch's longest)
    bare_forward.py WORK --model M --device D --per-row  every item in turn, no dedup: its image, its
                                                         caption and negatives, one forward each

WORK holds images.txt (unique image paths), texts.json (unique texts) and items.json (per item: image
path, caption, negatives), as bench/extract_speed_bench.py writes them. Prints one JSON line of timings."""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from contextlib import nullcontext  # noqa: E402

import open_clip  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

IMAGE_OUTPUTS = dict(image_indices=1, normalize_intermediates=True, image_output_fmt="NLC",
                     image_output_extra_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--decode-threads", type=int, default=max(4, os.cpu_count() or 1))
    parser.add_argument("--per-row", action="store_true")
    parser.add_argument("--model-only", type=int, default=0, help="also time N forwards of a ready batch")
    args = parser.parse_args()
    imported = time.perf_counter()
    # vlcache's own small configs (vlcache-tiny: a model so cheap that only the overhead is measured)
    open_clip.add_model_config(os.path.join(os.path.dirname(__file__), "..", "pipeline", "encoders", "model_configs"))
    model, _, preprocess = open_clip.create_model_and_transforms(args.model, device=args.device)
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(args.model)
    built = time.perf_counter()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device.startswith("cuda") else nullcontext()
    with torch.inference_mode(), autocast:
        run = per_row if args.per_row else batched
        counts = run(args, model, preprocess, tokenizer)
        _sync(args.device)
        done = time.perf_counter()
        rates = model_only(args, model) if args.model_only else {}
    print(json.dumps({"import_s": imported - STARTED, "build_s": built - imported, "work_s": done - built,
                      "total_s": done - STARTED, **counts, **rates}))


def batched(args, model, preprocess, tokenizer) -> dict:
    with open(os.path.join(args.work, "images.txt")) as f:
        paths = f.read().split("\n")
    with open(os.path.join(args.work, "texts.json")) as f:
        texts = json.load(f)

    def load(path: str) -> torch.Tensor:
        with Image.open(path) as image:
            return preprocess(image.convert("RGB"))

    batches = [paths[i:i + args.batch_size] for i in range(0, len(paths), args.batch_size)]
    with ThreadPoolExecutor(args.decode_threads) as pool:
        ahead = [pool.submit(load, p) for p in batches[0]] if batches else []
        for i in range(len(batches)):
            pixels = torch.stack([f.result() for f in ahead])
            ahead = [pool.submit(load, p) for p in batches[i + 1]] if i + 1 < len(batches) else []
            _keep(model.forward_intermediates(image=pixels.to(args.device, non_blocking=True), **IMAGE_OUTPUTS))
    ids = tokenizer(texts)
    lengths = (ids != 0).sum(1)
    order = torch.argsort(lengths)
    for chunk in torch.split(order, args.batch_size):
        _keep(causal_text(model, ids[chunk, : int(lengths[chunk].max())].to(args.device)))
    return {"images": len(paths), "texts": len(texts)}


def causal_text(model, ids: torch.Tensor) -> dict:
    """CLIP's text tower on captions trimmed to the batch's longest (its tokens never attend to the
    padding after them): every token's output and the pooled, projected embedding."""
    length = ids.shape[1]
    x = model.token_embedding(ids) + model.positional_embedding[:length]
    tokens = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    pooled = tokens[torch.arange(len(ids)), ids.argmax(dim=-1)] @ model.text_projection
    return {"tokens": tokens, "pooled": pooled}


def per_row(args, model, preprocess, tokenizer) -> dict:
    with open(os.path.join(args.work, "items.json")) as f:
        items = json.load(f)
    for item in items:
        with Image.open(item["image"]) as image:
            pixels = preprocess(image.convert("RGB"))[None].to(args.device)
        _keep(model.forward_intermediates(image=pixels, **IMAGE_OUTPUTS))
        for text in [item["caption"], *item["negatives"]]:
            _keep(model.forward_intermediates(text=tokenizer([text]).to(args.device), text_indices=1,
                                              normalize_intermediates=True))  # padded to 77: no batch to trim
    return {"items": len(items)}


def model_only(args, model) -> dict:
    """The encoder's own rate on a batch already on the device: the ceiling for images/s."""
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    pixels = torch.randn(args.batch_size, 3, size, size, device=args.device)
    _keep(model.forward_intermediates(image=pixels, **IMAGE_OUTPUTS))
    _sync(args.device)
    start = time.perf_counter()
    for _ in range(args.model_only):
        _keep(model.forward_intermediates(image=pixels, **IMAGE_OUTPUTS))
    _sync(args.device)
    return {"model_only_images_per_s": args.model_only * args.batch_size / (time.perf_counter() - start)}


def _keep(outputs: dict) -> None:
    """What an extractor keeps: every tensor on the host, as float16."""
    for value in outputs.values():
        for tensor in value if isinstance(value, list) else [value]:
            if isinstance(tensor, torch.Tensor):
                tensor.to(torch.float16).cpu()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
