"""`vlcache probe`: whether the binding is in the frozen tokens at all, before any head is asked to
find it. Linear probes (trainer/probe.py), trained on cached embeddings only, with labels from a
generated world's ground truth (each scene's objects, each caption's mentions):

- image, colour / shape: from the patch token under an object (the patch at its box's centre), the
  object's colour, or its shape;
- text, colour: from a caption's object word (the last token of the shape noun), the colour the
  caption binds to that object.

Each is set against chance (the test set's most frequent label) and against the same probe on the
global embedding, told which object is meant (the shape, or for the shape probe the colour, as a
one-hot): does the image's global embedding know which colour the square has? Both probes see the
same objects: those whose asked-for attribute names one object of their scene (or caption), and
whose centre no other object covers. A token probe far above its global twin says the binding is
in the tokens for a local head to find; a token probe at chance says there is nothing to find."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cache_schemas import SpaceEmbeddings, VlcacheError, open_store
from pipeline.encoders import encoder_class
from trainer.probe import ProbeScore, fit_probe

from .world.config import PALETTE

PROBES = {"image colour": ("image", "colour", "shape"), "image shape": ("image", "shape", "colour"),
          "text colour": ("text", "colour", "shape")}  # name -> (side, label, what names the object)


@dataclass
class Samples:
    """One probe's examples: token features, global features, the naming attribute, the label."""

    token: list[np.ndarray] = field(default_factory=list)
    global_: list[np.ndarray] = field(default_factory=list)
    query: list[str] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    present: list[int] = field(default_factory=list)  # distinct labels among the scene's (caption's) objects

    def add(self, token: np.ndarray, global_: np.ndarray, query: str, label: str, present: int) -> None:
        self.token.append(token)
        self.global_.append(global_)
        self.query.append(query)
        self.label.append(label)
        self.present.append(present)


def run_probes(store_uri: str, world_dir: str, prefix: str = "world", space_key: str | None = None,
               storage_options: dict | None = None) -> dict[str, Any]:
    """Train every probe on `{prefix}-train`, score it on each test split the world has."""
    store = open_store(store_uri, storage_options=storage_options)
    space = store.space_or_only(space_key)
    if "patches" not in space.spec.image_tokens:
        raise VlcacheError(f"space {space.key} stores no patch tokens; extract with --tokens patches to probe them")
    splits = [s for s in ("train", "test_id", "test_ood") if os.path.exists(os.path.join(world_dir, f"{s}.jsonl"))]
    if "train" not in splits or len(splits) < 2:
        raise VlcacheError(f"{world_dir} is not a generated world (train.jsonl and a test split's .jsonl)")
    samples = {split: _samples(space, store.dataset(f"{prefix}-{split}"), os.path.join(world_dir, f"{split}.jsonl"))
               for split in splits}
    results: dict[str, Any] = {"space": space.key, "store": store_uri, "world": world_dir, "probes": {}}
    for name in PROBES:
        train = samples["train"][name]
        results["probes"][name] = {split: _score(train, samples[split][name]) for split in splits[1:]}
    return results


def _score(train: Samples, test: Samples) -> dict[str, Any] | None:
    """None where a split has no example of this probe (a tiny world)."""
    if not train.label or not test.label:
        return None
    token = fit_probe(np.stack(train.token), train.label, np.stack(test.token), test.label)
    queries = sorted(set(train.query))
    glob = fit_probe(_with_query(train, queries), train.label, _with_query(test, queries), test.label)
    # What a reader that knows which labels are present, but not which object has which, scores.
    unbound = float(np.mean([1 / n for n in test.present]))
    return {"token": asdict(token), "global": asdict(glob), "unbound_guess": unbound}


def _with_query(samples: Samples, queries: list[str]) -> np.ndarray:
    onehot = np.array([[q == known for known in queries] for q in samples.query], np.float32)
    return np.concatenate([np.stack(samples.global_), onehot], 1)


def _samples(space: SpaceEmbeddings, dataset, jsonl: str) -> dict[str, Samples]:
    with open(jsonl, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    items = {r["item_id"]: r for r in dataset.items.to_pylist()}
    images, texts = [], []  # (hash, ground truth) pairs, each hash once
    for row in rows:
        item = items.get(row["item_id"])
        if item is None or row.get("scene") is None:
            raise VlcacheError(f"{jsonl}: item {row['item_id']} is not in dataset {dataset.name}, or has no "
                               "scene; probe the world the dataset was extracted from")
        images += [(item["image"], row["scene"]), *zip(item["negative_images"][:1], [row["negative_scene"]])]
        texts += [(item["caption"], (row["caption"], row["caption_segments"])),
                  *zip(item["negative_captions"][:1], [(row["negative_caption"], row["negative_caption_segments"])])]
    out = {name: Samples() for name in PROBES}
    _image_samples(space, dict(images), dataset.images, out)
    _text_samples(space, dict(texts), out)
    return out


def _image_samples(space: SpaceEmbeddings, scenes: dict[str, list[dict]], table, out: dict[str, Samples]) -> None:
    hashes = [h for h in scenes if h is not None]
    rows = space.rows("images", hashes)
    keep = rows >= 0
    hashes, rows = [h for h, k in zip(hashes, keep) if k], rows[keep]
    width = dict(zip(table["hash"].to_pylist(), table["width"].to_pylist()))
    patches = space.read("image_patches", rows).astype(np.float32)  # (N, P, D)
    glob = space.read("image_global", rows).astype(np.float32)
    grid = int(round(np.sqrt(patches.shape[1])))
    for i, h in enumerate(hashes):
        scene = scenes[h]
        for k, obj in enumerate(scene):
            x0, y0, x1, y1 = obj["box"]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if any(o["box"][0] <= cx <= o["box"][2] and o["box"][1] <= cy <= o["box"][3]
                   for j, o in enumerate(scene) if j != k):
                continue  # its centre is under another object too: which one the patch shows is unclear
            side = width[h] / grid
            token = patches[i, min(grid - 1, int(cy // side)) * grid + min(grid - 1, int(cx // side))]
            for name, (kind, label, query) in PROBES.items():
                if kind == "image" and sum(o[query] == obj[query] for o in scene) == 1:
                    out[name].add(token, glob[i], obj[query], obj[label], len({o[label] for o in scene}))


def _text_samples(space: SpaceEmbeddings, captions: dict[str, tuple[str, list[str]]], out: dict[str, Samples]) -> None:
    hashes = list(captions)
    rows = space.rows("texts", hashes)
    keep = rows >= 0
    hashes, rows = [h for h, k in zip(hashes, keep) if k], rows[keep]
    tokenize = encoder_class(space.spec.encoder).tokenizer(space.spec)
    tokens, mask = space.read_tokens_padded(rows)
    lengths = mask.sum(1)
    glob = space.read("text_global", rows).astype(np.float32)
    for i, h in enumerate(hashes):
        text, segments = captions[h]
        mentions = [_mention(s) for s in segments]
        shapes = Counter(m[1] for m in mentions if m)
        colours = {m[0] for m in mentions if m and m[0]}
        end = 0
        for segment, mention in zip(segments, mentions):
            end = text.index(segment, end) + len(segment)
            if mention is None or mention[0] is None or shapes[mention[1]] != 1:
                continue  # a relation clause, a mention without a colour, or a shape named twice
            position = _last_token(tokenize, text[:end])
            if position < lengths[i]:  # else cut by the context length
                out["text colour"].add(tokens[i, position].astype(np.float32), glob[i], mention[1], mention[0],
                                       len(colours))


def _mention(segment: str) -> tuple[str | None, str] | None:
    """(colour or None, shape) of an object phrase ("a large red circle", "two blue crosses"); None
    for a relation clause."""
    words = segment.split()
    if words[0] == "the":  # "the red circle is left of ...": a relation, not a mention
        return None
    shape = words[-1]
    if words[0] not in ("a", "an"):  # a count: the shape is plural
        shape = shape[:-2] if shape.endswith(("ses", "xes")) else shape[:-1]
    return next((w for w in words if w in PALETTE), None), shape


def _last_token(tokenize, prefix: str) -> int:
    """The index of `prefix`'s last token among the ids of any text it begins (the tokenizers probed
    split at spaces first): where its ids and those of `prefix + " and"` part ways, less one."""
    ids, _ = tokenize([prefix + " and", prefix])
    same = (ids[0] == ids[1]).tolist()
    return same.index(False) - 1


def write_report(results: dict[str, Any], out: str) -> str:
    """probe.json and probe.md in `out`; returns the Markdown."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "probe.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    text = (f"Linear probes on space `{results['space']}` (trained on train; accuracy %, chance = the test set's most "
            "frequent label; unbound = guessing among the labels present, what knowing them without their binding "
            "scores).\n\n" + table(results))
    with open(os.path.join(out, "probe.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text


def table(results: dict[str, Any]) -> str:
    lines = ["| probe | test split | n train / test | classes | chance | unbound | token | global + which object |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, by_split in results["probes"].items():
        for split, s in by_split.items():
            if s is None:
                lines.append(f"| {name} | {split} | no examples | | | | | |")
                continue
            token, glob = ProbeScore(**s["token"]), ProbeScore(**s["global"])
            lines.append(f"| {name} | {split} | {token.n_train} / {token.n_test} | {token.classes} | "
                         f"{100 * token.chance:.1f} | {100 * s['unbound_guess']:.1f} | {100 * token.accuracy:.1f} | "
                         f"{100 * glob.accuracy:.1f} |")
    return "\n".join(lines) + "\n"
