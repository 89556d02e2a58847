"""SugarCrepe: a folder of JSON files (add_att.json, swap_obj.json, ...), each
{"0": {"filename": ..., "caption": ..., "negative_caption": ...}, ...}. The subset is the file's
stem; type and subtype come from it (swap_att -> swap, att). Images are found under --images-root
(the COCO val2017 folder). Either may be remote (read with --source-options)."""

from __future__ import annotations

import json
import os

from cache_schemas import InvalidSourceError

from .base import RawDataset, RawItem, ReaderOptions, caption_text, resolve
from .remote import NO_OPTIONS, SourceOptions

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def read(source: str, images_root: str | None, split: str | None, options: ReaderOptions = ReaderOptions(),
         source_options: SourceOptions = NO_OPTIONS) -> RawDataset:
    if not source_options.isdir(source):
        raise InvalidSourceError(f"sugarcrepe source {source} must be a folder of JSON files such as swap_att.json")
    files = [f for f in source_options.names(source) if f.endswith(".json")]
    if not files:
        raise InvalidSourceError(f"no .json files in {source}")
    root = images_root or source
    dataset = RawDataset()
    for name in files:
        subset = name[: -len(".json")]
        for key, entry in _entries(os.path.join(source, name), source_options):
            where = f"{name} entry {key}"
            if not isinstance(entry.get("filename"), str) or not entry["filename"]:
                raise InvalidSourceError(f"{where}: needs a filename, got {entry.get('filename')!r}")
            kind, _, sub = subset.partition("_")
            dataset.items.append(RawItem(
                item_id=f"{subset}/{key}",
                image=resolve(entry["filename"], root),
                caption=caption_text(entry.get("caption"), where),
                negative_captions=(caption_text(entry.get("negative_caption"), where),),
                subset=subset,
                type=kind or None,
                subtype=sub or None,
                split=split or "test",
            ))
    return dataset


def _entries(path: str, source_options: SourceOptions) -> list[tuple[str, dict]]:
    try:
        data = json.loads(source_options.read(path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidSourceError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InvalidSourceError(f"{path} must be an object of entries keyed \"0\", \"1\", ...")
    return sorted(data.items(), key=lambda kv: (len(kv[0]), kv[0]))
