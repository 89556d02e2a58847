"""The last step of every shard: write its arrays whole, one Zarr write per array, then commit it with
the checksum of each written block. Shared by the encoder pass (`shards.py`) and by import from an
export file (`importer.py`), so a shard commits the same way whatever computed its numbers. No torch."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from cache_schemas import SpaceWriter, checksum
from cache_schemas.errors import says_disk_full


class _ShardFailureEchoes(logging.Filter):
    """A shard that fails on a full disk is said in one line by the driver (`extract`). A worker's own
    records of that run would say it again, on the driver's stderr where the worker runs in its process
    (and on the terminal its processes share): the failed task (distributed's "Compute Failed", with the
    traceback), and the shards still running when the driver, having cancelled them, closed the cluster
    ("Async instruction ... ended with CancelledError"). Installed where workers import this module."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Compute Failed") and isinstance(record.args, tuple):
            return not any(says_disk_full(str(arg)) for arg in record.args[3:4])  # (key, state, task, exception)
        return not (message.startswith("Async instruction for") and message.endswith("CancelledError"))


for _logger in ("distributed.worker", "distributed.worker.state_machine"):
    logging.getLogger(_logger).addFilter(_ShardFailureEchoes())


def commit_image_shard(space: SpaceWriter, shard: int, rows: pa.Table, arrays: dict[str, np.ndarray],
                       errors: list[str | None]) -> None:
    """`rows`: the shard's planned rows, sorted by row; `arrays`: one block per image array, row for row
    (zeros where `errors` says the image failed)."""
    start = int(rows["row"][0].as_py())
    checksums = {}
    for name, block in arrays.items():
        space.array(name)[start:start + len(block)] = block
        checksums[name] = checksum(block)
    space.commit("images", shard, rows.append_column("error", pa.array(errors, pa.string())), checksums)


def commit_text_shard(space: SpaceWriter, shard: int, rows: pa.Table, tokens: np.ndarray,
                      pooled: np.ndarray) -> None:
    """`tokens`: the shard's text tokens packed from its first token row (as the plan's offsets say);
    `pooled`: one global embedding per planned row."""
    start = int(rows["row"][0].as_py())
    base = space.token_base(shard)
    space.array("text_tokens")[base:base + len(tokens)] = tokens
    space.array("text_global")[start:start + len(pooled)] = pooled
    checksums = {"text_tokens": checksum(tokens), "text_global": checksum(pooled)}
    part = rows.append_column("error", pa.nulls(len(pooled), pa.string()))
    space.commit("texts", shard, part, checksums, token_rows=(base, base + len(tokens)))
