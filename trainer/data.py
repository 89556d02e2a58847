"""Streaming cached tensors into training batches, without loading the store into RAM.

Order: items are grouped by the Zarr chunk that holds their image, the groups are shuffled, and a
bounded shuffle buffer mixes items across nearby groups (the block-then-buffer shuffle of streaming
loaders). Reading: a bounded LRU of decoded chunks serves every row, so each chunk is read about once
per epoch while its items pass through the buffer. The order depends only on (seed, epoch), so a run
resumes mid-epoch by skipping batches, without reading them."""

from __future__ import annotations

import queue
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, fields
from typing import Iterator

import numpy as np
import pyarrow.compute as pc
import torch

from cache_schemas import DatasetTables, SpaceEmbeddings, VlcacheError

# What a head may ask for, and the store array each comes from.
IMAGE_INPUTS = {"patches": "image_patches", "cls": "image_cls", "values": "image_values", "global": "image_global"}
TEXT_INPUTS = {"tokens": "text_tokens", "global": "text_global"}


@dataclass(frozen=True)
class Examples:
    """A dataset's items as rows of one space. Items whose image or caption the space lacks are
    dropped (and counted); missing negatives become -1 padding."""

    item_id: np.ndarray  # (N,) str
    subset: np.ndarray  # (N,) str
    type: np.ndarray  # (N,) str or None
    subtype: np.ndarray  # (N,) str or None
    image: np.ndarray  # (N,) image rows
    caption: np.ndarray  # (N,) text rows
    negatives: np.ndarray  # (N, K) text rows, -1 = none
    negative_images: np.ndarray  # (N, J) image rows, -1 = none
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.image)

    @classmethod
    def from_dataset(cls, space: SpaceEmbeddings, dataset: DatasetTables, split: str | None = None) -> "Examples":
        items = dataset.items
        if split is not None:
            splits = set(items["split"].to_pylist())
            if split not in splits:
                raise VlcacheError(f"dataset {dataset.name} has no split {split!r}; splits: {sorted(splits)}")
            items = items.filter(pc.equal(items["split"], split))
        image = space.rows("images", items["image"].to_pylist())
        caption = space.rows("texts", items["caption"].to_pylist())
        keep = (image >= 0) & (caption >= 0)
        if not keep.any():
            raise VlcacheError(f"no item of dataset {dataset.name} has its image and caption in space {space.key}: "
                               f"extract the dataset with this encoder first")
        negatives = _padded_rows(space, "texts", items["negative_captions"].to_pylist())
        negative_images = _padded_rows(space, "images", items["negative_images"].to_pylist())
        column = lambda name: np.array(items[name].to_pylist(), dtype=object)[keep]  # noqa: E731
        return cls(column("item_id"), column("subset"), column("type"), column("subtype"), image[keep],
                   caption[keep], negatives[keep], negative_images[keep], dropped=int((~keep).sum()))

    @property
    def has_negative_captions(self) -> bool:
        return bool((self.negatives >= 0).any())

    @property
    def has_negative_images(self) -> bool:
        return bool((self.negative_images >= 0).any())


def _padded_rows(space: SpaceEmbeddings, kind: str, lists: list[list[str]]) -> np.ndarray:
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), max(width, 1)), -1, dtype=np.int64)
    for i, hashes in enumerate(lists):
        rows = space.rows(kind, hashes)
        rows = rows[rows >= 0]
        out[i, : len(rows)] = rows
    return out


class ChunkCache:
    """Rows of a space's arrays, served from whole decoded chunks: one LRU per array, each holding at
    most `chunks` chunks, so captions read at random never evict the image chunks a buffer still needs."""

    def __init__(self, space: SpaceEmbeddings, chunks: int):
        self.space = space
        self.chunks = chunks
        self._lru: dict[str, OrderedDict[int, np.ndarray]] = {}
        self.reads: Counter = Counter()  # chunk reads per array
        self._offsets, self._lengths = space.token_index()

    def chunk_length(self, name: str) -> int:
        return self.chunk_shape(name)[0]

    def chunk_shape(self, name: str) -> tuple[int, ...]:
        return self.space.layouts[name].chunks(self.space.spec, self.space.geometry)[0]

    def capacity(self, names) -> int:
        """Most bytes the cache holds for these arrays."""
        itemsize = np.dtype(self.space.spec.dtype).itemsize
        return sum(self.chunks * int(np.prod(self.chunk_shape(n))) * itemsize for n in names)

    @property
    def bytes(self) -> int:
        return sum(chunk.nbytes for lru in self._lru.values() for chunk in lru.values())

    def rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """(len(rows), *row_shape) in the order asked."""
        rows = np.asarray(rows, dtype=np.int64)
        length = self.chunk_length(name)
        out = np.empty((len(rows), *self.space.layouts[name].row_shape), dtype=self.space.spec.dtype)
        chunk_ids = rows // length
        for chunk in np.unique(chunk_ids):
            mine = chunk_ids == chunk
            out[mine] = self._chunk(name, int(chunk), length)[rows[mine] - chunk * length]
        return out

    def tokens(self, text_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated real tokens of `text_rows` and each text's length."""
        starts, lengths = self._offsets[text_rows], self._lengths[text_rows]
        index = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
        return self.rows("text_tokens", index), lengths

    def _chunk(self, name: str, chunk: int, length: int) -> np.ndarray:
        lru = self._lru.setdefault(name, OrderedDict())
        if chunk in lru:
            lru.move_to_end(chunk)
            return lru[chunk]
        data = self.space.array(name)[chunk * length:(chunk + 1) * length]  # one aligned chunk read
        self.reads[name] += 1
        lru[chunk] = data
        if len(lru) > self.chunks:
            lru.popitem(last=False)
        return data


@dataclass
class Batch:
    """One batch. Images: the items' images, then their negative images; texts: every caption the
    batch names (positives and hard negatives), once each. Index arrays point into those tables."""

    examples: np.ndarray  # (B,) indices into Examples
    epoch: int
    position: int  # this batch's index in its epoch: a run resumes at position + 1
    images: dict[str, torch.Tensor]  # patches (I, P, D), global (I, E), ...
    texts: dict[str, torch.Tensor]  # tokens (T, L, D), mask (T, L), global (T, E)
    image_rows: torch.Tensor  # (I,) store rows, to tell duplicates apart from negatives
    text_rows: torch.Tensor  # (T,)
    positive: torch.Tensor  # (B,) the caption of each item's image
    negatives: torch.Tensor  # (B, K) hard negative captions, -1 = none
    negative_images: torch.Tensor  # (B, J) negative images, -1 = none

    def to(self, device: torch.device) -> "Batch":
        def move(x):
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            if isinstance(x, torch.Tensor):
                x = x.to(device, non_blocking=True)
                return x.float() if x.dtype == torch.float16 else x
            return x
        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


@dataclass
class LoaderState:
    """Where a loader is: enough to resume the exact same stream."""

    epoch: int = 0
    batch: int = 0  # batches already taken in this epoch


@dataclass
class BatchLoader:
    space: SpaceEmbeddings
    examples: Examples
    needs: frozenset[str]  # e.g. {"image.patches", "text.tokens"}
    batch_size: int
    shuffle_buffer: int = 2048  # items
    seed: int = 0
    shuffle: bool = True
    pin_memory: bool = False
    prefetch: int = 2
    state: LoaderState = field(default_factory=LoaderState)

    def __post_init__(self) -> None:
        # The buffer's items (plus the batches in flight) span about this many chunks of each array
        # they read, since items enter the buffer chunk by chunk; two more absorb the boundaries.
        chunks = -(-(self.shuffle_buffer + 2 * self.batch_size) // self.space.geometry.chunk_rows) + 2
        self.cache = ChunkCache(self.space, chunks)

    @property
    def cache_capacity(self) -> int:
        """Most bytes of decoded chunks this loader holds."""
        return self.cache.capacity(self._arrays("image") + self._arrays("text"))

    def _arrays(self, side: str) -> list[str]:
        table = IMAGE_INPUTS if side == "image" else TEXT_INPUTS
        return [table[n.split(".", 1)[1]] for n in self.needs if n.startswith(side + ".")]

    # -- order ----------------------------------------------------------------------------------

    def epoch_order(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches as arrays of example indices; depends only on (seed, epoch)."""
        n = len(self.examples)
        if not self.shuffle:
            order = np.argsort(self.examples.image, kind="stable")  # chunk by chunk
            return [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        rng = np.random.default_rng([self.seed, epoch])
        chunk = self.examples.image // self.space.geometry.chunk_rows
        groups = [np.flatnonzero(chunk == c) for c in rng.permutation(np.unique(chunk))]
        stream = np.concatenate([rng.permutation(g) for g in groups])
        order = _buffer_shuffle(stream, self.shuffle_buffer, rng)
        usable = n - n % self.batch_size if n >= self.batch_size else n  # full batches only
        return [order[i:i + self.batch_size] for i in range(0, usable, self.batch_size)]

    # -- reading --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        """Batches from the current state on: forever when shuffling (epoch after epoch), one pass when not."""
        return _prefetched(self._batches(), self.prefetch)

    def _batches(self) -> Iterator[Batch]:
        while True:
            order = self.epoch_order(self.state.epoch)
            while self.state.batch < len(order):
                batch = self.collate(order[self.state.batch], self.state.epoch, self.state.batch)
                self.state.batch += 1
                yield batch
            if not self.shuffle:
                return
            self.state = LoaderState(self.state.epoch + 1, 0)

    def collate(self, index: np.ndarray, epoch: int = 0, position: int = 0) -> Batch:
        ex = self.examples
        negative_images = ex.negative_images[index]
        image_rows = np.concatenate([ex.image[index], negative_images[negative_images >= 0]])
        negative_image_index = np.full(negative_images.shape, -1, dtype=np.int64)
        negative_image_index[negative_images >= 0] = len(index) + np.arange(int((negative_images >= 0).sum()))
        named = np.concatenate([ex.caption[index], ex.negatives[index].ravel()])
        text_rows = np.unique(named[named >= 0])
        where = {r: i for i, r in enumerate(text_rows)}
        lookup = np.vectorize(lambda r: where.get(r, -1), otypes=[np.int64])
        return Batch(
            examples=index,
            epoch=epoch,
            position=position,
            images=self.image_inputs(image_rows),
            texts=self.text_inputs(text_rows),
            image_rows=torch.from_numpy(image_rows),
            text_rows=torch.from_numpy(text_rows),
            positive=torch.from_numpy(lookup(ex.caption[index])),
            negatives=torch.from_numpy(lookup(ex.negatives[index])),
            negative_images=torch.from_numpy(negative_image_index),
        )

    def image_inputs(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The head's image inputs for store rows, as tensors (float16 until moved to a device)."""
        out = {}
        for name in (n.split(".", 1)[1] for n in self.needs if n.startswith("image.")):
            out[name] = self._tensor(self.cache.rows(IMAGE_INPUTS[name], rows))
        return out

    def text_inputs(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The head's text inputs for store rows: tokens padded to the longest, with a mask."""
        out = {}
        if "text.tokens" in self.needs:
            flat, lengths = self.cache.tokens(rows)
            padded = np.zeros((len(rows), int(lengths.max()), flat.shape[1]), dtype=flat.dtype)
            mask = np.arange(padded.shape[1])[None, :] < lengths[:, None]
            padded[mask] = flat
            out["tokens"], out["mask"] = self._tensor(padded), torch.from_numpy(mask)
        if "text.global" in self.needs:
            out["global"] = self._tensor(self.cache.rows("text_global", rows))
        return out

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor.pin_memory() if self.pin_memory else tensor


def _buffer_shuffle(stream: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A shuffle buffer over `stream`: each output comes from the last `size` inputs at most."""
    if size <= 1:
        return stream
    out, buffer = np.empty_like(stream), list(stream[:size])
    k = 0
    for item in stream[size:]:
        j = int(rng.integers(len(buffer)))
        out[k], buffer[j] = buffer[j], item
        k += 1
    out[k:] = rng.permutation(np.array(buffer, dtype=stream.dtype)) if buffer else []
    return out


def _prefetched(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Read the next batches in a background thread while the caller trains on this one."""
    if depth <= 0:
        yield from batches
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        q.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # surfaced in the consumer's thread
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="vlcache-prefetch")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
