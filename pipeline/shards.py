"""Worker side: encode one planned shard, write its arrays, then commit it.

A shard is written whole, in one Zarr write per array, and becomes visible only when its commit
record lands, so a worker killed mid-shard leaves nothing a reader can see."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from cache_schemas import Location, SpaceWriter
from cache_schemas.layout import Kind

from .commit import commit_image_shard, commit_text_shard
from .decoding import Decode, close_process_pools, process_decoder, thread_decoder, usable_cores
from .encoders import Encoder, load_encoder
from .images import ImageError
from .readers.remote import NO_OPTIONS, SourceOptions

_ENCODERS: dict[tuple, Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ShardTask:
    location: Location
    space_key: str
    kind: Kind
    shard: int
    rows: pa.Table  # the shard's planned rows, sorted by row
    pretrained: str | None  # as the driver found it (a checkpoint's absolute path there may differ from the store's)
    tokenizer_path: str | None = None  # likewise, a local tokenizer folder
    device: str = "auto"
    batch_size: int = 64
    torch_threads: int | None = None
    decode_processes: int | None = None  # 0: decode in threads of the worker; None: see _decode_processes
    worker_cores: int | None = None  # the cores of this machine the worker may use; None: as many as it has
    source_options: SourceOptions = NO_OPTIONS  # the images' filesystem's (--source-options): in memory only


class Stages(dict):
    """Seconds spent per stage of a shard, so a run can say where its time went."""

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class ShardResult:
    kind: Kind
    shard: int
    rows: int
    failed: int
    seconds: float
    stages: dict[str, float]  # load (model, once per worker), decode_wait, encode, write


def run_shard(task: ShardTask) -> ShardResult:
    started, stages = time.perf_counter(), Stages()
    space = SpaceWriter.open(task.location, task.space_key)
    with stages.time("load"):
        encoder = _encoder(space, task)
    encode = _encode_images if task.kind == "images" else _encode_texts
    failed = encode(space, encoder, task, stages)
    return ShardResult(task.kind, task.shard, task.rows.num_rows, failed, time.perf_counter() - started, stages)


def _encoder(space: SpaceWriter, task: ShardTask) -> Encoder:
    """One encoder per worker process, loaded on first use and kept for every later shard."""
    device = _device(task.device)
    key = (space.key, task.pretrained, device)
    with _ENCODERS_LOCK:  # a worker with several threads loads the model once
        if key not in _ENCODERS:
            _ENCODERS.clear()  # frees the previous model's memory before loading another
            torch.set_num_threads(_torch_threads(task))
            spec = dataclasses.replace(space.spec, tokenizer_path=task.tokenizer_path or space.spec.tokenizer_path)
            _ENCODERS[key] = load_encoder(spec, task.pretrained, device)
        return _ENCODERS[key]


def _torch_threads(task: ShardTask) -> int:
    """Local workers are given their share of this machine. A remote worker (a SLURM job, another
    machine) takes its own cores over its Dask threads: Dask's nanny starts it with OMP_NUM_THREADS=1,
    which would leave torch one core of a CPU job's many."""
    if task.torch_threads:
        return task.torch_threads
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except (ImportError, ValueError):
        threads = 1
    return max(1, usable_cores() // threads)


def _device(requested: str) -> str:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and torch.cuda.device_count() > 1:
        return f"cuda:{_worker_index() % torch.cuda.device_count()}"  # one GPU per local worker
    return requested


def _worker_index() -> int:
    try:
        from distributed import get_worker

        name = get_worker().name
        return name if isinstance(name, int) else int(hashlib.sha1(str(name).encode()).hexdigest(), 16)
    except (ImportError, ValueError):
        return 0


# -- images ---------------------------------------------------------------------------------------

def _encode_images(space: SpaceWriter, encoder: Encoder, task: ShardTask, stages: Stages) -> int:
    rows, n = task.rows, task.rows.num_rows
    out = {name: np.zeros((n, *space.layouts[name].row_shape), space.spec.dtype) for name in space.arrays("images")}
    errors: list[str | None] = [None] * n
    decoder = _decoder(encoder, _decode_processes(task, encoder.device.type), task.source_options)
    for index, loaded in _prefetched(decoder, rows, task.batch_size, stages):
        for i, x in zip(index, loaded):
            if isinstance(x, ImageError):
                errors[i] = f"{x.stage}: {x}"
        decoded = [(i, x) for i, x in zip(index, loaded) if isinstance(x, torch.Tensor)]
        if decoded:
            good, pixels = zip(*decoded)
            with stages.time("encode"):
                for name, value in encoder.encode_images(torch.stack(pixels)).items():
                    out[name][list(good)] = value
    with stages.time("write"):
        commit_image_shard(space, task.shard, rows, out, errors)
    return sum(e is not None for e in errors)


def _decode_processes(task: ShardTask, device_type: str) -> int:
    """As asked; by default processes where a GPU encodes (decode threads would share the interpreter
    with the thread launching its kernels: 0.58x the bare forward against 0.95x on an H200), threads
    where the CPU encodes (its cores are busy encoding). Two cores stay for encoding and writing."""
    if task.decode_processes is not None:
        return task.decode_processes
    if device_type != "cuda":
        return 0
    return max(2, (task.worker_cores or usable_cores()) - 2)


def _decoder(encoder: Encoder, processes: int, source_options: SourceOptions = NO_OPTIONS) -> Decode:
    """Threads of this worker by default (PIL releases the interpreter lock while it decodes and
    resizes); processes when asked and the encoder can build its image steps without its model."""
    steps = type(encoder).image_transform(encoder.space) if processes else None
    if steps is None:
        return thread_decoder(encoder.preprocess, encoder.image_size, source_options)
    return process_decoder(encoder.space.key, processes, steps, encoder.image_size, source_options=source_options)


def _prefetched(decode: Decode, rows: pa.Table, batch_size: int, stages: Stages
                ) -> Iterator[tuple[list[int], list[torch.Tensor | ImageError]]]:
    """Decoded batches in order, the next batch decoding while the caller encodes this one."""
    uris, hashes = rows["uri"].to_pylist(), rows["hash"].to_pylist()
    queue: deque[tuple[list[int], list[Future]]] = deque()
    for start in range(0, len(uris), batch_size):
        stop = min(start + batch_size, len(uris))
        queue.append((list(range(start, stop)), decode(uris[start:stop], hashes[start:stop])))
        if len(queue) > 1:
            yield _ready(queue.popleft(), stages)
    while queue:
        yield _ready(queue.popleft(), stages)


def _ready(batch: tuple[list[int], list[Future]], stages: Stages) -> tuple[list[int], list]:
    index, futures = batch
    with stages.time("decode_wait"):
        try:
            return index, [_pixels(loaded) for f in futures for loaded in f.result()]
        except BrokenProcessPool:  # a decode process died (killed, out of memory): the next shard starts anew
            close_process_pools()
            raise


def _pixels(loaded) -> torch.Tensor | ImageError:
    """What a decode thread or process returned (pixels, an ImageError or its stage and message), as
    encode_images takes it."""
    if isinstance(loaded, np.ndarray):
        return torch.from_numpy(loaded)
    if isinstance(loaded, tuple):
        return ImageError(*loaded)
    return loaded


# -- texts ----------------------------------------------------------------------------------------

def _encode_texts(space: SpaceWriter, encoder: Encoder, task: ShardTask, stages: Stages) -> int:
    rows, n = task.rows, task.rows.num_rows
    base = space.token_base(task.shard)
    offsets = rows["offset"].to_numpy() - base
    with stages.time("tokenize"):
        ids, n_tokens = encoder.tokenize(rows["text"].to_pylist())
    if not np.array_equal(n_tokens, rows["n_tokens"].to_numpy()):
        raise RuntimeError(f"text shard {task.shard}: the worker's tokenizer disagrees with the plan's token counts")
    tokens = np.zeros((int(n_tokens.sum()), space.spec.text_token_dim), space.spec.dtype)
    pooled = np.zeros((n, space.spec.dims["embed_dim"]), space.spec.dtype)
    # Batches of similar length: a causal tower then computes almost no padding.
    order = np.argsort(n_tokens, kind="stable")
    for chunk in np.array_split(order, max(1, -(-n // task.batch_size))):
        with stages.time("encode"):
            per_text, pooled[chunk] = encoder.encode_texts(ids[chunk], n_tokens[chunk])
        for i, t in zip(chunk, per_text):
            tokens[offsets[i]:offsets[i] + len(t)] = t
    with stages.time("write"):
        commit_text_shard(space, task.shard, rows, tokens, pooled)
    return 0
