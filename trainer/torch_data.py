"""The store as PyTorch and Hugging Face `datasets` take it: a dataset's items in one space, each with its
image's and caption's embeddings and the item's own fields. The public way to read a store into a model.

- `ItemDataset` (map-style): the usable items (image and caption both in the space) in the items' order;
  a batch of indices is read at once (`__getitems__`, which DataLoader calls), each Zarr chunk decoded once.
- `ItemStream` (iterable): every usable item exactly once per epoch across DDP ranks and DataLoader
  workers, in an order fixed by (seed, epoch), read a window at a time; resumable (`state_dict`).
- `collate`: a batch of items; the captions' ragged tokens padded, with a mask and their lengths.
- `to_datasets`: a `datasets.Dataset` of the items' columns and their global embeddings.

A rank's order: the dataset's block shuffle (`data.block_shuffle`: chunk-local windows) cut into
`world_size` near-equal contiguous slices, one per rank. A rank's slice is dealt to its DataLoader workers
in blocks of `batch_size` items, block j to worker j mod K. The DataLoader takes a batch from each worker
in turn, so a rank's items arrive in its slice's order whatever K is, and the count of items taken is
where the epoch resumes. The cost: a chunk whose items went to several workers is decoded by each."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from cache_schemas import SpaceEmbeddings, Store, VlcacheError, open_store
from trainer.data import Examples, WindowRows, block_shuffle

ARRAYS = ("image_global", "image_patches", "text_global", "text_tokens")  # what an item holds by default
RENAMED = {"image": "image_hash", "caption": "caption_hash"}  # items' hash columns, beside the tensors


class _Items:
    """A dataset's usable items in one space, and their reads in any process: each DataLoader worker
    opens the store again rather than share the parent's handles."""

    def __init__(self, store: Store | str, dataset: str, space: str | None = None, *, split: str | None = None,
                 arrays: Sequence[str] = ARRAYS, storage_options: dict[str, Any] | None = None):
        opened = store if isinstance(store, Store) else open_store(str(store), storage_options=storage_options)
        data, embeddings = opened.dataset(dataset), opened.space_or_only(space)
        unknown = sorted(set(arrays) - set(embeddings.layouts))
        if unknown or not arrays:
            raise VlcacheError(f"space {embeddings.key} stores no {unknown or 'arrays'}; "
                               f"choose arrays among {sorted(embeddings.layouts)}")
        self.examples = Examples.from_dataset(embeddings, data, split)
        self.arrays = tuple(arrays)
        self.space_key = embeddings.key
        self.chunk_rows = embeddings.geometry.chunk_rows
        self.fields = _fields(data.items, self.examples.index)
        self._location = dataclasses.replace(opened.location)  # its fields alone: no filesystem handles
        self._opened: tuple[int, SpaceEmbeddings] | None = (os.getpid(), embeddings)

    def __len__(self) -> int:
        return len(self.examples)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_opened": None}  # a spawned worker opens its own

    @property
    def space(self) -> SpaceEmbeddings:
        if self._opened is None or self._opened[0] != os.getpid():
            space = SpaceEmbeddings.open(dataclasses.replace(self._location), self.space_key)
            if "text_tokens" in self.arrays:  # token spans come with a lookup by hash: one scan, not one a window
                space.lookup("texts", self.fields["caption_hash"])
            self._opened = (os.getpid(), space)
        return self._opened[1]

    def _read(self, positions: np.ndarray) -> list[dict[str, Any]]:
        """The items at `positions` (of the usable items), every array read once for all of them."""
        rows = {"images": self.examples.image[positions], "texts": self.examples.caption[positions]}
        window = WindowRows(self.space, list(self.arrays), rows["images"], rows["texts"])
        tensors = {name: window.rows(name, rows[self.space.layouts[name].kind])
                   for name in self.arrays if name != "text_tokens"}
        items = self.fields.take(pa.array(positions)).to_pylist()
        for i, item in enumerate(items):
            item.update({name: torch.from_numpy(values[i]) for name, values in tensors.items()})
            if "text_tokens" in self.arrays:  # this caption's own tokens: (n_tokens, D)
                item["text_tokens"] = torch.from_numpy(window.tokens(rows["texts"][i:i + 1])[0][0])
        return items


def _fields(items: pa.Table, index: np.ndarray) -> pa.Table:
    """The usable items' own columns, their position in the items table first, hash columns renamed."""
    kept = items.take(pa.array(index))
    return pa.table({"index": pa.array(index, pa.int64()),
                     **{RENAMED.get(name, name): kept[name] for name in kept.column_names}})


class ItemDataset(_Items, Dataset):
    """Map-style: item i of the usable items, in the dataset's order. With a DDP job, pair it with a
    `DistributedSampler`; `ItemStream` shards by itself."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"item index out of range for {len(self)} items")
        return self._read(positions % len(self))


class ItemStream(_Items, IterableDataset):
    """Iterable: each usable item once per epoch across ranks and workers. `batch_size` is the DataLoader's
    (per rank): with the same value there, items arrive in the rank's order and `state_dict` resumes exactly.
    `rank` and `world_size` default to torch.distributed's when it is initialised. Call `set_epoch` before
    each epoch, with `persistent_workers=False` (the default) so workers see it."""

    def __init__(self, store: Store | str, dataset: str, space: str | None = None, *, batch_size: int,
                 split: str | None = None, arrays: Sequence[str] = ARRAYS, shuffle: bool = True, seed: int = 0,
                 shuffle_buffer: int = 2048, rank: int | None = None, world_size: int | None = None,
                 storage_options: dict[str, Any] | None = None):
        if batch_size < 1 or shuffle_buffer < 1:
            raise VlcacheError(f"batch_size ({batch_size}) and shuffle_buffer ({shuffle_buffer}) must be at least 1")
        self.rank, self.world_size = _rank(rank, world_size)
        super().__init__(store, dataset, space, split=split, arrays=arrays, storage_options=storage_options)
        self.batch_size, self.shuffle, self.seed, self.shuffle_buffer = batch_size, shuffle, seed, shuffle_buffer
        self.epoch = 0
        self._resume = (0, 0)  # (epoch, position) a loaded state starts at

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """This rank's items in the current epoch (positions among the usable items), in the order they arrive."""
        n = len(self.examples)
        everything = (block_shuffle(self.examples.image // self.chunk_rows, self.shuffle_buffer, self.seed,
                                    self.epoch) if self.shuffle else np.arange(n))
        return everything[n * self.rank // self.world_size:n * (self.rank + 1) // self.world_size]

    @property
    def position(self) -> int:
        """Items of this epoch's order already taken: 0, or where a loaded state left off."""
        epoch, position = self._resume
        return position if epoch == self.epoch else 0

    def __len__(self) -> int:
        """Items this rank yields in the current epoch."""
        return max(0, len(self.order()) - self.position)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        remaining = self.order()[self.position:]
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        if info is not None:  # block j of batch_size items to worker j mod K: batches arrive in order
            remaining = remaining[np.arange(len(remaining)) // self.batch_size % workers == info.id]
        window = max(1, self.shuffle_buffer // workers)  # the workers together hold about one shuffle buffer
        for start in range(0, len(remaining), window):
            yield from self._read(remaining[start:start + window])

    def state_dict(self, taken: int) -> dict[str, Any]:
        """Where this rank is, once its loader has yielded `taken` items since this epoch's iteration began.
        Mid-epoch every rank of a DDP step has taken as many, so one rank's state resumes them all."""
        if not 0 <= taken <= len(self):
            raise VlcacheError(f"taken ({taken}) must be between 0 and the {len(self)} items this rank yields")
        return {"epoch": self.epoch, "position": self.position + taken, "order": self._order_key()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration yields the rest of the saved epoch, then `set_epoch` goes on from there."""
        try:
            epoch, position, order = int(state["epoch"]), int(state["position"]), dict(state["order"])
        except (KeyError, TypeError, ValueError):
            raise VlcacheError("not an ItemStream state: expected the dict state_dict() returns") from None
        mine = self._order_key()
        differ = sorted(k for k in mine.keys() | order.keys() if mine.get(k) != order.get(k))
        if differ:
            saved, now = ({k: keys.get(k) for k in differ} for keys in (order, mine))
            raise VlcacheError(f"the state was saved for another order: {saved} saved, {now} now")
        if epoch < 0 or position < 0:
            raise VlcacheError(f"not an ItemStream state: epoch {epoch}, position {position}")
        self.epoch, self._resume = epoch, (epoch, position)

    def _order_key(self) -> dict[str, Any]:
        """What decides the order: a state resumes only a stream with the same."""
        return {"space": self.space_key, "items": len(self.examples), "shuffle": self.shuffle, "seed": self.seed,
                "shuffle_buffer": self.shuffle_buffer, "world_size": self.world_size}


def _rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """As given, else torch.distributed's when it is initialised, else a single process."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if distributed else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if distributed else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise VlcacheError(f"rank {rank} is not one of world_size {world_size} ranks (0 to world_size - 1)")
    return rank, world_size


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch: tensors stacked; text_tokens padded with zeros to the longest caption, (B, L, D), with
    text_mask (B, L) True on real tokens and text_length (B,); index a tensor; other fields as lists."""
    batch: dict[str, Any] = {}
    for name in items[0]:
        values = [item[name] for item in items]
        if name == "text_tokens":
            lengths = torch.tensor([len(v) for v in values], dtype=torch.int64)
            batch[name] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True)
            batch["text_mask"] = torch.arange(batch[name].shape[1])[None, :] < lengths[:, None]
            batch["text_length"] = lengths
        elif isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values)
        elif name == "index":
            batch[name] = torch.tensor(values, dtype=torch.int64)
        else:
            batch[name] = values
    return batch


def to_datasets(store: Store | str, dataset: str, space: str | None = None, *, split: str | None = None,
                storage_options: dict[str, Any] | None = None):
    """A Hugging Face `datasets.Dataset`, one row per usable item: the item's columns (as in ItemDataset)
    and image_global, text_global (E values in the space's dtype). Held in memory: the items' globals."""
    try:
        import datasets
        from datasets.table import InMemoryTable
    except ImportError:
        raise VlcacheError("to_datasets needs the Hugging Face datasets package: pip install datasets") from None
    items = _Items(store, dataset, space, split=split, arrays=("image_global", "text_global"),
                   storage_options=storage_options)
    table = items.fields
    for name, rows in (("image_global", items.examples.image), ("text_global", items.examples.caption)):
        values = items.space.read(name, rows)  # (N, E), each chunk decoded once
        table = table.append_column(name, pa.FixedSizeListArray.from_arrays(values.reshape(-1), values.shape[1]))
    return datasets.Dataset(InMemoryTable(table))
