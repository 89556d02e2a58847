"""Which files a table source names, and which split they hold. A source is one file; a folder of
shards (a Hugging Face hub snapshot's `data/`, img2dataset's Parquet output); a glob
(`data/train-0000*.parquet`); or a `datasets` folder written by `save_to_disk`: a Dataset's (Arrow
files beside a state.json) or a DatasetDict's (dataset_dict.json naming one such folder per split).
Each may be local or remote (s3://bucket/data/, a glob of URLs), reached with --source-options.

Where the layout names splits (a DatasetDict, or shards named as the hub names them,
`<split>-00000-of-00004.parquet`), `split` chooses one; it may be left out only where there is one."""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass

from cache_schemas import InvalidSourceError

from .remote import NO_OPTIONS, SourceOptions, absolute

EXTENSIONS = {"parquet": (".parquet",), "csv": (".csv",), "tsv": (".tsv",), "jsonl": (".jsonl", ".json"),
              "arrow": (".arrow",)}
HUB_SHARD = re.compile(r"(?P<split>[\w.]+?)-\d{5}-of-\d{5}\.\w+")  # what `push_to_hub` names its files


@dataclass(frozen=True)
class SourceFiles:
    paths: list[str]  # absolute paths (URLs for a remote source), in reading order
    fmt: str  # how to read each: the format asked for, or "arrow" for a `datasets` folder
    split: str | None  # the split the layout names, if it names one


def source_files(source: str, fmt: str, split: str | None,
                 source_options: SourceOptions = NO_OPTIONS) -> SourceFiles:
    if source_options.isfile(os.path.join(source, "dataset_dict.json")):
        return _dataset_dict(source, split, source_options)
    if source_options.isfile(os.path.join(source, "state.json")):
        return SourceFiles(_save_to_disk(source, source_options), "arrow", None)
    if source_options.isfile(source):
        return SourceFiles([absolute(source)], fmt, None)
    if source_options.isdir(source):
        found = [p for p in source_options.files_under(source, hidden=False) if p.lower().endswith(EXTENSIONS[fmt])]
        if not found:
            raise InvalidSourceError(f"no {'/'.join(EXTENSIONS[fmt])} files under {source}")
    elif glob.has_magic(source):
        found = source_options.glob(source)
        if not found:
            raise InvalidSourceError(f"no files match {source}")
    else:
        raise InvalidSourceError(f"{fmt} source {source} is not a file, a folder of {fmt} files, a glob, "
                                 "or a `datasets` save_to_disk folder")
    return _hub_split([absolute(p) for p in found], source, split, fmt)


def choose_split(available: list[str], wanted: str | None, source: str) -> str:
    if wanted in available:
        return wanted
    if wanted is None and len(available) == 1:
        return available[0]
    if wanted is None:
        raise InvalidSourceError(f"{source} holds the splits {', '.join(available)}: choose one with --split")
    raise InvalidSourceError(f"{source} has no split {wanted!r}; its splits: {', '.join(available)}")


def _dataset_dict(source: str, split: str | None, source_options: SourceOptions) -> SourceFiles:
    try:
        splits = json.loads(source_options.read(os.path.join(source, "dataset_dict.json")))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidSourceError(f"cannot read {source}/dataset_dict.json: {exc}") from None
    chosen = choose_split([str(s) for s in splits], split, source)
    return SourceFiles(_save_to_disk(os.path.join(source, chosen), source_options), "arrow", chosen)


def _save_to_disk(folder: str, source_options: SourceOptions) -> list[str]:
    names = source_options.names(folder) if source_options.isdir(folder) else []
    files = [absolute(os.path.join(folder, name)) for name in names if name.endswith(".arrow")]
    if not files:
        raise InvalidSourceError(f"{folder} is not a `datasets` save_to_disk folder (no state.json and .arrow files)")
    return files


def _hub_split(paths: list[str], source: str, split: str | None, fmt: str) -> SourceFiles:
    """The shards of the chosen split, where every file is named as the hub names shards; else all."""
    names = [HUB_SHARD.fullmatch(os.path.basename(p)) for p in paths]
    if not all(names):
        return SourceFiles(paths, fmt, None)
    chosen = choose_split(sorted({m["split"] for m in names}), split, source)
    return SourceFiles([p for p, m in zip(paths, names) if m["split"] == chosen], fmt, chosen)
