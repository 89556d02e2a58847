"""Streaming cached tensors into training batches, without loading the store into RAM.

Order (a block shuffle, as streaming loaders do): items are grouped by the Zarr chunk that holds their
image, the groups are shuffled, and the resulting stream is cut into windows of `shuffle_buffer` items,
each shuffled on its own. Reading: a window's rows are read together, so each chunk it touches is
decoded once, and only the rows the window uses are kept: memory is the window, whatever the store's
size. A dataset whose rows fit `resident_mb` is instead read once and kept on the training device,
where batches are gathered: the same batches, no reading after the first. The order depends only on
(seed, epoch), so a run resumes mid-epoch by skipping batches without reading them."""

from __future__ import annotations

import copy
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cache_schemas import DatasetTables, SpaceEmbeddings, VlcacheError
from cache_schemas.layout import token_rows

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
    index: np.ndarray | None = None  # (N,) each item's position in the dataset's items table

    def __len__(self) -> int:
        return len(self.image)

    @classmethod
    def from_dataset(cls, space: SpaceEmbeddings, dataset: DatasetTables, split: str | None = None) -> Examples:
        items = dataset.items
        index = np.arange(items.num_rows)
        if split is not None:
            splits = set(items["split"].to_pylist())
            if split not in splits:
                raise VlcacheError(f"dataset {dataset.name} has no split {split!r}; splits: {sorted(splits)}")
            chosen = pc.equal(items["split"], split)
            items, index = items.filter(chosen), index[chosen.to_numpy(zero_copy_only=False)]
        image = space.rows("images", items["image"])
        caption = space.rows("texts", items["caption"])
        keep = (image >= 0) & (caption >= 0)
        if not keep.any():
            raise VlcacheError(f"no item of dataset {dataset.name} has its image and caption in space {space.key}: "
                               f"extract the dataset with this encoder first")
        negatives = _padded_rows(space, "texts", items["negative_captions"])
        negative_images = _padded_rows(space, "images", items["negative_images"])
        column = lambda name: np.array(items[name].to_pylist(), dtype=object)[keep]  # noqa: E731
        return cls(column("item_id"), column("subset"), column("type"), column("subtype"), image[keep],
                   caption[keep], negatives[keep], negative_images[keep], dropped=int((~keep).sum()),
                   index=index[keep])

    @property
    def has_negative_captions(self) -> bool:
        return bool((self.negatives >= 0).any())


def _padded_rows(space: SpaceEmbeddings, kind: str, lists: pa.ChunkedArray) -> np.ndarray:
    """Each item's list of hashes as rows, the ones the space has first, -1 after: one lookup for all."""
    lists = lists.combine_chunks()
    rows = space.rows(kind, pc.list_flatten(lists))
    owner = pc.list_parent_indices(lists).to_numpy()
    found = rows >= 0
    rows, owner = rows[found], owner[found]
    position = np.arange(len(rows)) - np.searchsorted(owner, owner)  # place within its item's found rows
    width = int(position.max()) + 1 if len(rows) else 0
    width = max(width, int(pc.max(pc.list_value_length(lists)).as_py() or 0), 1)
    out = np.full((len(lists), width), -1, dtype=np.int64)
    out[owner, position] = rows
    return out


class WindowRows:
    """The rows a window of items needs, read at once: each Zarr chunk touched is decoded once (zarr's
    orthogonal read) and only the needed rows are kept."""

    def __init__(self, space: SpaceEmbeddings, arrays: list[str], image_rows: np.ndarray, text_rows: np.ndarray):
        self.space = space
        self._rows: dict[str, np.ndarray] = {}
        self._data: dict[str, np.ndarray] = {}
        self.chunk_reads: Counter = Counter()
        self._tokens: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (rows, flat, bounds)
        for name in sorted(arrays, key=lambda n: n != "text_tokens"):  # its reads' overhead is the largest: before
            rows = np.unique(image_rows if self.space.layouts[name].kind == "images" else text_rows)
            if name == "text_tokens":
                flat, lengths = space.read_tokens(rows)
                self._tokens = (rows, flat, np.concatenate([[0], np.cumsum(lengths)]))
                self._count(name, _token_rows(space, rows))
            else:
                self._rows[name], self._data[name] = rows, space.read(name, rows)
                self._count(name, rows)

    def _count(self, name: str, rows: np.ndarray) -> None:
        length = self.space.layouts[name].chunks(self.space.spec, self.space.geometry)[0][0]
        self.chunk_reads[name] += len(np.unique(rows // length))

    @property
    def nbytes(self) -> int:
        tokens = self._tokens[1].nbytes if self._tokens is not None else 0
        return sum(d.nbytes for d in self._data.values()) + tokens

    def to(self, device: torch.device) -> WindowRows:
        """The same rows as tensors on `device`, where batches are then gathered (a resident loader)."""
        moved = copy.copy(self)
        moved._data = {name: torch.from_numpy(data).to(device) for name, data in self._data.items()}
        if self._tokens is not None:  # one row of zeros after the tokens, where padding gathers from
            known, flat, bounds = self._tokens
            tokens = torch.from_numpy(flat)
            on_device = tokens.new_zeros((len(tokens) + 1, *tokens.shape[1:]), device=device)
            on_device[:-1] = tokens
            moved._tokens = (known, on_device, bounds)
        return moved

    def rows(self, name: str, rows: np.ndarray) -> np.ndarray | torch.Tensor:
        return _take(self._data[name], np.searchsorted(self._rows[name], rows))

    def tokens(self, rows: np.ndarray) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
        """The text rows' real tokens padded to the longest, (n, L, D), and a mask of the real ones (n, L):
        one gather from the window, with no concatenated copy in between."""
        known, flat, bounds = self._tokens
        at = np.searchsorted(known, rows)
        starts, lengths = bounds[at], bounds[at + 1] - bounds[at]
        positions = np.arange(int(lengths.max(initial=0)))
        mask = positions[None, :] < lengths[:, None]
        if isinstance(flat, torch.Tensor):  # resident: padding gathers the zero row `to` put last
            return _take(flat, np.where(mask, starts[:, None] + positions[None, :], len(flat) - 1)), mask
        padded = flat[np.where(mask, starts[:, None] + positions[None, :], 0)]
        padded[~mask] = 0
        return padded, mask


def _take(data: np.ndarray | torch.Tensor, index: np.ndarray) -> np.ndarray | torch.Tensor:
    """Rows of a window's array, numpy or a tensor on any device."""
    return data[torch.from_numpy(index).to(data.device)] if isinstance(data, torch.Tensor) else data[index]


def _token_rows(space: SpaceEmbeddings, text_rows: np.ndarray) -> np.ndarray:
    return token_rows(*space.token_spans(text_rows))


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

    def to(self, device: torch.device) -> Batch:
        def move(x):
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            if isinstance(x, torch.Tensor):
                x = x.to(device, non_blocking=True)
                return x.float() if x.dtype == torch.float16 else x
            return x
        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def batch_rows(examples, index: np.ndarray) -> dict[str, torch.Tensor]:
    """A batch's rows and the indices into them that `Batch` holds, for the items `index` of
    `examples` (anything with Examples' image, caption, negatives and negative_images arrays): images
    are the items' images then their negative images; texts every caption named, once each, sorted."""
    negative_images = examples.negative_images[index]
    image_rows = np.concatenate([examples.image[index], negative_images[negative_images >= 0]])
    negative_image_index = np.full(negative_images.shape, -1, dtype=np.int64)
    negative_image_index[negative_images >= 0] = len(index) + np.arange(int((negative_images >= 0).sum()))
    named = np.concatenate([examples.caption[index], examples.negatives[index].ravel()])
    text_rows = np.unique(named[named >= 0])

    def lookup(rows: np.ndarray) -> np.ndarray:  # rows -> their place in text_rows; -1 stays -1
        return np.where(rows >= 0, np.searchsorted(text_rows, rows), -1)

    return {"image_rows": torch.from_numpy(image_rows), "text_rows": torch.from_numpy(text_rows),
            "positive": torch.from_numpy(lookup(examples.caption[index])),
            "negatives": torch.from_numpy(lookup(examples.negatives[index])),
            "negative_images": torch.from_numpy(negative_image_index)}


def block_shuffle(chunk: np.ndarray, window: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of items (N >= 1) given each one's Zarr chunk: chunks in a random order, then windows
    of `window` items each shuffled. Reads stay chunk-local; the order depends only on (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    groups = [np.flatnonzero(chunk == c) for c in rng.permutation(np.unique(chunk))]
    stream = np.concatenate([rng.permutation(g) for g in groups])
    return np.concatenate([rng.permutation(stream[i:i + window]) for i in range(0, len(stream), window)])


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
    # Examples whose rows take at most this many MB are read once and kept on `device`, where every
    # batch is then gathered: no reading after the first window, and no copy to the device per batch.
    resident_mb: float = 0
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        self.chunk_reads: Counter = Counter()  # Zarr chunks decoded, per array
        self.max_window_bytes = 0
        self._resident_rows: WindowRows | None = None

    @cached_property
    def resident(self) -> bool:
        return self.resident_mb > 0 and self.rows_bytes() <= self.resident_mb * 2**20

    def rows_bytes(self) -> int:
        """The bytes of every row the examples name, in the arrays this loader reads."""
        ex = self.examples
        named = {"images": np.concatenate([ex.image, ex.negative_images.ravel()]),
                 "texts": np.concatenate([ex.caption, ex.negatives.ravel()])}
        unique = {kind: np.unique(rows[rows >= 0]) for kind, rows in named.items()}
        total = 0
        for name in self._arrays("image") + self._arrays("text"):
            layout = self.space.layouts[name]
            count = int(self.space.token_spans(unique["texts"])[1].sum()) if layout.ragged else len(unique[layout.kind])
            total += count * int(np.prod(layout.row_shape)) * np.dtype(self.space.spec.dtype).itemsize
        return total

    @property
    def window_batches(self) -> int:
        return max(1, self.shuffle_buffer // self.batch_size)

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
        order = block_shuffle(self.examples.image // self.space.geometry.chunk_rows,
                              self.window_batches * self.batch_size, self.seed, epoch)
        usable = n - n % self.batch_size if n >= self.batch_size else n  # full batches only
        return [order[i:i + self.batch_size] for i in range(0, usable, self.batch_size)]

    # -- reading --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        """Batches from the current state on: forever when shuffling (epoch after epoch), one pass when not."""
        return _prefetched(self._batches(), self.prefetch)

    def _batches(self) -> Iterator[Batch]:
        per_window = self.window_batches
        while True:
            order = self.epoch_order(self.state.epoch)
            resume_at = self.state.batch
            for start in range(resume_at - resume_at % per_window, len(order), per_window):
                items = np.concatenate(order[start:start + per_window])
                rows = self._resident() if self.resident else self._read(items)
                for position in range(max(start, resume_at), min(start + per_window, len(order))):
                    batch = self.collate(order[position], self.state.epoch, position, rows)
                    self.state.batch = position + 1
                    yield batch
                rows = None  # released before the next window is read: one window in memory, not two
            if not self.shuffle:
                return
            self.state = LoaderState(self.state.epoch + 1, 0)

    def _resident(self) -> WindowRows:
        """Every example's rows, read on first use and kept on the device."""
        if self._resident_rows is None:
            self._resident_rows = self._read(np.arange(len(self.examples))).to(torch.device(self.device))
        return self._resident_rows

    def _read(self, items: np.ndarray) -> WindowRows:
        """Every row that these items' batches will need, in one read per array."""
        ex = self.examples
        images = np.concatenate([ex.image[items], ex.negative_images[items].ravel()])
        texts = np.concatenate([ex.caption[items], ex.negatives[items].ravel()])
        arrays = self._arrays("image") + self._arrays("text")
        rows = WindowRows(self.space, arrays, images[images >= 0], texts[texts >= 0])
        self.chunk_reads.update(rows.chunk_reads)
        self.max_window_bytes = max(self.max_window_bytes, rows.nbytes)
        return rows

    def collate(self, index: np.ndarray, epoch: int = 0, position: int = 0, rows: WindowRows | None = None) -> Batch:
        rows = rows or self._read(index)
        named = batch_rows(self.examples, index)
        return Batch(examples=index, epoch=epoch, position=position,
                     images=self.image_inputs(named["image_rows"].numpy(), rows),
                     texts=self.text_inputs(named["text_rows"].numpy(), rows), **named)

    def image_inputs(self, rows: np.ndarray, window: WindowRows | None = None) -> dict[str, torch.Tensor]:
        """The head's image inputs for store rows, as tensors (float16 until moved to a device)."""
        window = window or WindowRows(self.space, self._arrays("image"), rows, np.empty(0, np.int64))
        return {name: self._tensor(window.rows(IMAGE_INPUTS[name], rows))
                for name in (n.split(".", 1)[1] for n in self.needs if n.startswith("image."))}

    def text_inputs(self, rows: np.ndarray, window: WindowRows | None = None) -> dict[str, torch.Tensor]:
        """The head's text inputs for store rows: tokens padded to the longest, with a mask."""
        window = window or WindowRows(self.space, self._arrays("text"), np.empty(0, np.int64), rows)
        out = {}
        if "text.tokens" in self.needs:
            padded, mask = window.tokens(rows)
            out["tokens"], out["mask"] = self._tensor(padded), torch.from_numpy(mask)
        if "text.global" in self.needs:
            out["global"] = self._tensor(window.rows("text_global", rows))
        return out

    def _tensor(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(array, torch.Tensor):  # gathered from a resident window: already where it trains
            return array
        tensor = torch.from_numpy(array)
        return tensor.pin_memory() if self.pin_memory else tensor


def _prefetched(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Read the next batches in a background thread while the caller trains on this one.

    The thread is not a daemon, and it stops once this generator is closed or the interpreter starts to
    exit (the main thread has ended), after the read in hand: Python (before 3.14) ends a daemon thread
    that is still reading when it finalises by unwinding it mid-call, and inside torch's or zarr's native
    frames that aborts the process ("terminate called without an active exception", exit 134)."""
    if depth <= 0:
        yield from batches
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def stopping() -> bool:
        return stop.is_set() or not threading.main_thread().is_alive()

    def offer(item) -> bool:
        while not stopping():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if all(offer(batch) for batch in batches):
                offer(done)
        except BaseException as exc:  # surfaced in the consumer's thread
            offer(exc)

    thread = threading.Thread(target=produce, name="vlcache-prefetch")
    thread.start()
    try:
        while (item := _next(q, thread, done)) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)  # a read in hand finishes on its own; the interpreter's exit waits for it


def _next(q: queue.Queue, producer: threading.Thread, done: object) -> object:
    """The producer's next item, or `done` where it stopped without one (the interpreter exiting under a
    consumer that is not the main thread)."""
    while True:
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            if not producer.is_alive() and q.empty():
                return done
