"""`vlcache align`: a head's token-patch alignment drawn over an item's actual image, one panel per
caption token (or per segment of the caption, where the dataset names segments).

The maps are the head's own `alignment` (trainer/alignment.py): for maxsim the cosine of each token with
each patch, for tflocal the weights of its soft late interaction over regions. The patch grid is laid
over the part of the image the encoder saw (the centre square for open_clip's default `shortest`
resize, the whole image for `squash`, the padded square for `longest`), upsampled bilinearly.

Panel labels: the space's own tokenizer decodes each stored token where it can be loaded here and gives
as many tokens as were stored; otherwise the caption's words and punctuation stand in, when their count
matches the stored tokens (with start/end markers around them when it matches with two more); otherwise
the panels are numbered."""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass

import numpy as np

from cache_schemas import EmbeddingSpace, VlcacheError, open_store
from trainer.alignment import CaptionMaps, ItemMaps, item_maps
from trainer.run import load_head
from trainer.train import resolve_device

COLUMNS = 8  # panels per row
MEANING = {"maxsim": "cosine of\ntoken and patch", "tflocal": "soft late-interaction\nweight over regions"}


@dataclass(frozen=True)
class Scale:
    """The colour scale: one for the whole figure (captions and tokens compare), or each panel
    stretched to its own range (where each token points shows, not how strongly)."""

    low: float
    high: float
    label: str
    per_panel: bool = False


@dataclass(frozen=True)
class Drawn:
    path: str
    item_id: str
    panels: dict[str, list[str]]  # caption role -> its panels' labels
    labels_from: str  # where the first caption's panel labels come from (see the module's note)


def align(store_uri: str, dataset: str, item_ids: list[str], out: str, *, head_name: str | None = None,
          run_dir: str | None = None, space_key: str | None = None, negatives: bool = False,
          segments: bool = False, per_panel: bool = False, device: str = "cpu",
          storage_options: dict | None = None) -> list[Drawn]:
    """One PNG per item in `out`: its captions' alignment maps over its image."""
    store = open_store(store_uri, storage_options=storage_options)
    space, data = store.space_or_only(space_key), store.dataset(dataset)
    head, _ = load_head(space, head_name, run_dir)
    items = item_maps(space, data, head.to(resolve_device(device)), list(item_ids), negatives)
    images = {item.item_id: _image(item.image_uri, space.spec.preprocess) for item in items}  # all read first
    os.makedirs(out, exist_ok=True)
    return [_draw(os.path.join(out, f"{_safe(item.item_id)}.png"), item, images[item.item_id], head.name,
                  space.spec, segments, per_panel) for item in items]


def _image(uri: str, preprocess: dict) -> np.ndarray:
    """The part of the image the patch grid covers, as an RGB array."""
    from pipeline.images import ImageError, decode, read_bytes

    try:
        image = decode(read_bytes(uri), 512)
    except ImageError as exc:
        raise VlcacheError(f"cannot read the item's image {uri}: {exc}") from None
    w, h = image.size
    mode = preprocess.get("resize_mode", "shortest")
    if mode == "shortest":  # resized on its short side, then the centre square cropped
        side = min(w, h)
        image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    elif mode == "longest":  # resized on its long side, then padded to a square
        from PIL import Image

        square = Image.new("RGB", (max(w, h),) * 2, (preprocess.get("fill_color", 0),) * 3)
        square.paste(image, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
        image = square
    return np.asarray(image)  # squash: the whole image, stretched to the grid


def _draw(path: str, item: ItemMaps, image: np.ndarray, head: str, spec: EmbeddingSpace, by_segment: bool,
          per_panel: bool) -> Drawn:
    import matplotlib.pyplot as plt

    from .plots import save_figure

    blocks = [_panels(c, spec, by_segment) for c in item.captions]
    columns = min(COLUMNS, 1 + max(len(labels) for labels, _, _ in blocks))  # the image, then a panel each
    rows = [-(-(1 + len(labels)) // columns) for labels, _, _ in blocks]
    fig = plt.figure(figsize=(1.9 * columns + 0.8, 2.0 * sum(rows) + 0.5 * len(rows)), layout="constrained")
    scale = _scale(head, [maps for _, maps, _ in blocks], per_panel)
    subfigures = np.atleast_1d(fig.subfigures(len(rows), 1, height_ratios=rows))
    for sub, caption, block, n in zip(subfigures, item.captions, blocks, rows):
        _caption_row(sub, item.item_id, caption, block[:2], (n, columns), image, scale)
    save_figure(fig, path, dpi=90)
    return Drawn(path, item.item_id, {c.role: b[0] for c, b in zip(item.captions, blocks)}, blocks[0][2])


def _caption_row(sub, item_id: str, caption: CaptionMaps, panels: tuple[list[str], np.ndarray],
                 shape: tuple[int, int], image: np.ndarray, scale: Scale) -> None:
    """One caption's block: the image alone, then a labelled map per panel, and the colour bar."""
    labels, maps = panels
    stretched = " (each panel stretched to its own range)" if scale.per_panel else ""
    title = textwrap.fill(f"{item_id}, {caption.role}: {caption.text}{stretched}", 20 * shape[1])
    sub.suptitle(title, fontsize=10, x=0.01, ha="left")
    axes = sub.subplots(*shape, squeeze=False).ravel()
    _show(axes[0], image, None, "image", scale)
    shown = [_show(ax, image, grid, label, scale) for ax, label, grid in zip(axes[1:], labels, maps)]
    for ax in axes[1 + len(labels):]:
        ax.axis("off")
    if shown and not scale.per_panel:
        sub.colorbar(shown[-1], ax=list(axes), shrink=0.9, fraction=0.02, pad=0.01).set_label(scale.label, fontsize=8)


def _panels(caption: CaptionMaps, spec: EmbeddingSpace, by_segment: bool) -> tuple[list[str], np.ndarray, str]:
    """Labels and (panels, grid, grid) maps: one per stored token, or one per segment (its tokens' mean)."""
    labels, how = token_labels(spec, caption.text, len(caption.maps))
    if by_segment and caption.segments:
        spans = [(s, _span(labels, s)) for s in caption.segments]
        found = [(s, span) for s, span in spans if span]
        if found:
            return [s for s, _ in found], np.stack([caption.maps[a:b].mean(0) for _, (a, b) in found]), how
    return labels, caption.maps, how


def token_labels(spec: EmbeddingSpace, text: str, n: int) -> tuple[list[str], str]:
    """A label per stored token of `text`, and where the labels come from (see the module's note)."""
    decoded = _decoded(spec, text)
    if decoded is not None and len(decoded) == n:
        return decoded, "the space's tokenizer"
    words = re.findall(r"\w+|[^\w\s]", text)
    if n in (len(words), len(words) + 2):
        return (words if n == len(words) else ["<start>", *words, "<end>"]), "the caption's words (no tokenizer here)"
    return [f"token {i}" for i in range(n)], "token positions (neither tokenizer nor words fit)"


def _decoded(spec: EmbeddingSpace, text: str) -> list[str] | None:
    try:
        from pipeline.encoders import tokenizer_for

        tokenizer = tokenizer_for(spec)
        ids, counts = tokenizer([text])
        ids = [int(i) for i in ids[0][: int(counts[0])]]
        inner = getattr(tokenizer, "tokenizer", None)
        hf = getattr(inner, "tokenizer", None)
        if hasattr(hf, "convert_ids_to_tokens"):
            return [str(t) for t in hf.convert_ids_to_tokens(ids)]
        if hasattr(inner, "decode"):
            return [_short(inner.decode([i])) for i in ids]
    except Exception:  # noqa: BLE001 - any tokenizer that cannot be had here: labels come from the words
        return None
    return None


def _short(token: str) -> str:
    return {"<start_of_text>": "<start>", "<end_of_text>": "<end>"}.get(token.strip(), token.strip())


def _span(labels: list[str], segment: str) -> tuple[int, int] | None:
    """The tokens whose text, run together, spells `segment` (letters and digits only, lower case)."""
    key = lambda s: re.sub(r"[\W_]", "", s.lower())  # noqa: E731
    target, keys = key(segment), [key(x) for x in labels]
    for start in range(len(keys)):
        spelled = ""
        for end in range(start, len(keys)):
            spelled += keys[end]
            if spelled == target and keys[start]:
                return start, end + 1
            if not target.startswith(spelled):
                break
    return None


def _scale(head: str, maps: list[np.ndarray], per_panel: bool) -> Scale:
    values = np.concatenate([m.ravel() for m in maps])
    low = 0.0 if head == "tflocal" else float(values.min())  # weights: from zero
    return Scale(low, float(values.max()), MEANING.get(head, head), per_panel)


def _show(ax, image: np.ndarray, grid: np.ndarray | None, label: str, scale: Scale):
    """The image, and over it the map upsampled to the image (bilinear) with its best patch marked (+)."""
    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, w, h, 0))
    ax.set_title(textwrap.fill(label, 22), fontsize=10 if len(label) <= 22 else 8)
    ax.set_xticks([])
    ax.set_yticks([])
    if grid is None:
        return None
    low, high = (grid.min(), grid.max()) if scale.per_panel else (scale.low, scale.high)
    shown = ax.imshow(grid, extent=(0, w, h, 0), cmap="inferno", alpha=0.6, vmin=low, vmax=high,
                      interpolation="bilinear")
    row, col = np.unravel_index(int(np.argmax(grid)), grid.shape)
    ax.plot((col + 0.5) * w / grid.shape[1], (row + 0.5) * h / grid.shape[0], "+", color="white", ms=9, mew=2)
    return shown


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)
