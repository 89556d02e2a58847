"""Worker side: encode one planned shard, write its arrays, then commit it.

A shard is written whole, in one Zarr write per array, and becomes visible only when its commit
record lands, so a worker killed mid-shard leaves nothing a reader can see."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa
import torch

from cache_schemas import Location, SpaceEmbeddings
from cache_schemas.layout import Kind

from .commit import commit_image_shard, commit_text_shard
from .encoders import Encoder, load_encoder
from .images import ImageError, decode, read_bytes

# PIL releases the GIL while decoding and resizing, so threads overlap decode with encoding; a GPU
# encodes faster than a few cores decode, so every core gets one.
DECODE_THREADS = min(32, max(4, os.cpu_count() or 1))
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
    decode_processes: int = 0  # 0: decode in threads of the worker


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
    space = SpaceEmbeddings.open(task.location, task.space_key, writable=True)
    with stages.time("load"):
        encoder = _encoder(space, task)
    encode = _encode_images if task.kind == "images" else _encode_texts
    failed = encode(space, encoder, task, stages)
    return ShardResult(task.kind, task.shard, task.rows.num_rows, failed, time.perf_counter() - started, stages)


def _encoder(space: SpaceEmbeddings, task: ShardTask) -> Encoder:
    """One encoder per worker process, loaded on first use and kept for every later shard."""
    device = _device(task.device)
    key = (space.key, task.pretrained, device)
    with _ENCODERS_LOCK:  # a worker with several threads loads the model once
        if key not in _ENCODERS:
            _ENCODERS.clear()  # frees the previous model's memory before loading another
            if task.torch_threads:
                torch.set_num_threads(task.torch_threads)
            spec = dataclasses.replace(space.spec, tokenizer_path=task.tokenizer_path or space.spec.tokenizer_path)
            _ENCODERS[key] = load_encoder(spec, task.pretrained, device)
        return _ENCODERS[key]


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

def _encode_images(space: SpaceEmbeddings, encoder: Encoder, task: ShardTask, stages: Stages) -> int:
    rows, n = task.rows, task.rows.num_rows
    out = {name: np.zeros((n, *space.layouts[name].row_shape), space.spec.dtype) for name in space.arrays("images")}
    errors: list[str | None] = [None] * n
    decoder = _decoder(encoder, task.decode_processes)
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


Decode = Callable[[str, str], Future]  # (uri, expected hash) -> the future pixels


def _decoder(encoder: Encoder, processes: int) -> Decode:
    """Where images decode. Threads of this process by default (PIL releases the interpreter lock while
    it decodes and resizes); processes when asked and the encoder can build its preprocessing without
    its model, so that no decoding holds the lock the thread launching a GPU's kernels needs."""
    transform = type(encoder).image_transform(encoder.space) if processes else None
    if transform is None:
        return functools.partial(_thread_pool().submit, _load, encoder.preprocess, encoder.image_size)
    pool = _process_pool(encoder.space.key, processes, transform, encoder.image_size)
    return functools.partial(pool.submit, _decode_here)


@cache
def _thread_pool() -> ThreadPoolExecutor:
    """One pool per worker process, kept across shards."""
    return ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="vlcache-decode")


_PROCESS_POOLS: dict[tuple, ProcessPoolExecutor] = {}
_PROCESS_POOLS_LOCK = threading.Lock()


def _process_pool(space_key: str, processes: int, transform: Callable, size: int) -> ProcessPoolExecutor:
    """One pool per worker process and space, kept across shards. Its processes fork from a fork server
    (forking this process, threads and all, could deadlock) that imports what decoding needs once, so
    each process starts in milliseconds instead of importing torch for itself."""
    with _PROCESS_POOLS_LOCK:  # a worker's threads share it
        if (space_key, processes) not in _PROCESS_POOLS:
            _close_process_pools()
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__, type(transform).__module__])
            pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_start_decoding,
                                       initargs=(transform, size))
            for _ in range(processes):  # every process starts now, not one by one as the first batch arrives
                pool.submit(os.getpid)
            _PROCESS_POOLS[space_key, processes] = pool
        return _PROCESS_POOLS[space_key, processes]


def _close_process_pools() -> None:
    for pool in _PROCESS_POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _PROCESS_POOLS.clear()


_PROCESS_DECODER: list[Callable] = []  # in a decode process: its preprocessing, set once by _start_decoding


def _start_decoding(transform: Callable, size: int) -> None:
    _PROCESS_DECODER.append(functools.partial(_load, transform, size))


def _decode_here(uri: str, expected_hash: str) -> np.ndarray | tuple[str, str]:
    """In a decode process: the pixels as a plain array (cheap to send back), or the error's stage and message."""
    loaded = _PROCESS_DECODER[0](uri, expected_hash)
    return (loaded.stage, str(loaded)) if isinstance(loaded, ImageError) else loaded.numpy()


def _prefetched(decode: Decode, rows: pa.Table, batch_size: int, stages: Stages
                ) -> Iterator[tuple[list[int], list[torch.Tensor | ImageError]]]:
    """Decoded batches in order, the next batch decoding while the caller encodes this one."""
    uris, hashes = rows["uri"].to_pylist(), rows["hash"].to_pylist()
    batches = [list(range(i, min(i + batch_size, len(uris)))) for i in range(0, len(uris), batch_size)]
    queue: deque[tuple[list[int], list[Future]]] = deque()
    for index in batches:
        queue.append((index, [decode(uris[i], hashes[i]) for i in index]))
        if len(queue) > 1:
            yield _ready(queue.popleft(), stages)
    while queue:
        yield _ready(queue.popleft(), stages)


def _ready(batch: tuple[list[int], list[Future]], stages: Stages) -> tuple[list[int], list]:
    index, futures = batch
    with stages.time("decode_wait"):
        try:
            return index, [_pixels(f.result()) for f in futures]
        except BrokenProcessPool:  # a decode process died (killed, out of memory): the next shard starts anew
            with _PROCESS_POOLS_LOCK:
                _close_process_pools()
            raise


def _pixels(loaded) -> torch.Tensor | ImageError:
    """What a decode thread or process returned, as encode_images takes it."""
    if isinstance(loaded, np.ndarray):
        return torch.from_numpy(loaded)
    if isinstance(loaded, tuple):
        return ImageError(*loaded)
    return loaded


def _load(preprocess: Callable, size: int, uri: str, expected_hash: str) -> torch.Tensor | ImageError:
    try:
        data = read_bytes(uri)
        if hashlib.sha256(data).hexdigest() != expected_hash:
            raise ImageError("read", "file changed since it was hashed; rerun extract to pick up the new content")
        return preprocess(decode(data, size))
    except ImageError as exc:
        return exc


# -- texts ----------------------------------------------------------------------------------------

def _encode_texts(space: SpaceEmbeddings, encoder: Encoder, task: ShardTask, stages: Stages) -> int:
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
