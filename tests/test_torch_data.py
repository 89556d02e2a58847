"""The public reading interface: a real DataLoader with workers over a real store, DDP sharding, resuming,
padding, the map-style dataset and `datasets`."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cache_schemas import VlcacheError, open_store
from trainer.torch_data import ItemDataset, ItemStream, collate, to_datasets

BATCH = 4


def _loader(stream, workers=2, **kwargs):
    return DataLoader(stream, batch_size=BATCH, num_workers=workers, collate_fn=collate, **kwargs)


def _indices(batches):
    return [int(i) for batch in batches for i in batch["index"]]


@pytest.fixture(scope="module")
def usable(small_store):
    """Every item the space holds (all of small_sugarcrepe's), by their position in the items table."""
    store = open_store(small_store)
    return store, store.dataset("sc").items, store.space("vlcache-tiny")


def test_two_workers_yield_every_item_once_as_the_store_holds_it(small_store, usable):
    store, items, space = usable
    batches = list(_loader(ItemStream(small_store, "sc", batch_size=BATCH, seed=3)))
    seen = _indices(batches)
    assert sorted(seen) == list(range(items.num_rows))
    for batch in batches:
        image_rows = space.rows("images", batch["image_hash"])
        text_rows = space.rows("texts", batch["caption_hash"])
        assert batch["image_hash"] == [items["image"][i].as_py() for i in batch["index"]]
        np.testing.assert_array_equal(batch["image_global"].numpy(), space.read("image_global", image_rows))
        np.testing.assert_array_equal(batch["image_patches"].numpy(), space.read("image_patches", image_rows))
        np.testing.assert_array_equal(batch["text_global"].numpy(), space.read("text_global", text_rows))
        tokens, mask = space.read_tokens_padded(text_rows)
        np.testing.assert_array_equal(batch["text_tokens"].numpy(), tokens)
        np.testing.assert_array_equal(batch["text_mask"].numpy(), mask)
        assert batch["split"] == [items["split"][i].as_py() for i in batch["index"]]
        assert batch["subset"] == [items["subset"][i].as_py() for i in batch["index"]]


def test_the_order_is_fixed_by_seed_and_epoch_whatever_the_workers(small_store):
    stream = ItemStream(small_store, "sc", batch_size=BATCH, seed=3)
    alone = _indices(_loader(stream, workers=0))
    assert alone == _indices(_loader(stream, workers=2)) == [int(i) for i in stream.order()]
    stream.set_epoch(1)
    next_epoch = _indices(_loader(stream, workers=0))
    assert sorted(next_epoch) == sorted(alone) and next_epoch != alone
    unshuffled = ItemStream(small_store, "sc", batch_size=BATCH, shuffle=False)
    assert _indices(_loader(unshuffled, workers=0)) == list(range(len(unshuffled)))


def test_two_ranks_of_two_workers_partition_the_items(small_store, usable):
    _, items, _ = usable
    per_rank = [_indices(_loader(ItemStream(small_store, "sc", batch_size=BATCH, rank=rank, world_size=2)))
                for rank in (0, 1)]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(items.num_rows))
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1


def test_workers_read_a_store_on_s3_with_its_options(small_store, s3_store):
    """Each worker opens the store itself, with the options it was given: on a real S3 server (moto)."""
    import s3fs

    uri, options = s3_store
    s3fs.S3FileSystem(**options).put(str(small_store), uri.removeprefix("s3://"), recursive=True)
    remote = list(_loader(ItemStream(uri, "sc", batch_size=BATCH, storage_options=options)))
    local = list(_loader(ItemStream(small_store, "sc", batch_size=BATCH), workers=0))
    assert _indices(remote) == _indices(local)
    for got, expected in zip(remote, local):
        for name in ("image_global", "image_patches", "text_global", "text_tokens", "text_mask"):
            assert torch.equal(got[name], expected[name]), name


def test_ranks_come_from_torch_distributed_when_it_runs(small_store, tmp_path):
    """Two real processes in a gloo process group (a file rendezvous: no port), neither told its rank."""
    script = ("import json, sys, torch.distributed as dist\n"
              "from torch.utils.data import DataLoader\n"
              "from trainer.torch_data import ItemStream, collate\n"
              "rank = int(sys.argv[1])\n"
              f"dist.init_process_group('gloo', init_method='file://{tmp_path}/rendezvous', rank=rank, world_size=2)\n"
              f"stream = ItemStream({str(small_store)!r}, 'sc', batch_size=4, arrays=['text_global'])\n"
              "seen = [int(i) for b in DataLoader(stream, batch_size=4, collate_fn=collate) for i in b['index']]\n"
              "dist.barrier()\n"
              "print(json.dumps([stream.rank, stream.world_size, seen]))\n")
    runs = [subprocess.Popen([sys.executable, "-c", script, str(rank)], stdout=subprocess.PIPE, text=True)
            for rank in (0, 1)]
    out = [json.loads(run.communicate(timeout=120)[0]) for run in runs]
    assert [o[:2] for o in out] == [[0, 2], [1, 2]]
    assert sorted(out[0][2] + out[1][2]) == list(range(len(ItemDataset(small_store, "sc"))))


def test_a_resumed_stream_yields_exactly_the_rest_of_its_epoch(small_store):
    stream = ItemStream(small_store, "sc", batch_size=BATCH, seed=5)
    stream.set_epoch(2)
    everything = [int(i) for i in stream.order()]  # what a loader yields, whatever its workers (tested above)
    taken = []
    for step, batch in enumerate(_loader(stream)):  # a job stopped after three batches
        taken += _indices([batch])
        if step == 2:
            state = stream.state_dict(len(taken))
            break
    restarted = ItemStream(small_store, "sc", batch_size=BATCH, seed=5)
    restarted.load_state_dict(json.loads(json.dumps(state)))  # as a checkpoint holds it
    assert len(restarted) == len(everything) - len(taken)
    rest = _indices(_loader(restarted, workers=1))  # another number of workers
    assert taken + rest == everything
    restarted.set_epoch(3)  # the next epoch is whole again
    assert len(restarted) == len(everything) and sorted(_indices(_loader(restarted, workers=0))) == sorted(everything)


def test_a_state_resumes_only_the_same_order(small_store):
    state = ItemStream(small_store, "sc", batch_size=BATCH, seed=5).state_dict(BATCH)
    with pytest.raises(VlcacheError, match="seed"):
        ItemStream(small_store, "sc", batch_size=BATCH, seed=6).load_state_dict(state)
    with pytest.raises(VlcacheError, match="not an ItemStream state"):
        ItemStream(small_store, "sc", batch_size=BATCH).load_state_dict({"epoch": 0})
    with pytest.raises(VlcacheError, match="taken"):
        ItemStream(small_store, "sc", batch_size=BATCH).state_dict(10_000)


def test_ragged_tokens_are_padded_with_a_mask(small_store, usable):
    _, _, space = usable
    data = ItemDataset(small_store, "sc", arrays=["text_tokens"])
    items = [data[i] for i in range(len(data))]
    lengths = [len(item["text_tokens"]) for item in items]
    assert len(set(lengths)) > 1  # captions of different lengths
    batch = collate(items)
    assert batch["text_tokens"].shape[:2] == (len(items), max(lengths))
    assert batch["text_length"].tolist() == lengths
    assert batch["text_mask"].sum(1).tolist() == lengths and batch["text_mask"].dtype == torch.bool
    assert not batch["text_tokens"][~batch["text_mask"]].any()  # padding is zeros
    flat, counts = space.read_tokens(space.rows("texts", batch["caption_hash"]))
    np.testing.assert_array_equal(batch["text_tokens"][batch["text_mask"]].numpy(), flat)
    assert counts.tolist() == lengths


def test_the_map_style_dataset_holds_what_the_stream_yields(small_store):
    data = ItemDataset(small_store, "sc")
    streamed = {int(b["index"][0]): b for b in DataLoader(ItemStream(small_store, "sc", batch_size=1),
                                                          batch_size=1, num_workers=2, collate_fn=collate)}
    loaded = list(DataLoader(data, batch_size=5, num_workers=2, collate_fn=collate))  # __getitems__ in workers
    assert _indices(loaded) == list(range(len(data)))
    for i in range(len(data)):
        item, batch = data[i], streamed[i]
        assert item["index"] == i and item["item_id"] == batch["item_id"][0]
        for name in ("image_global", "image_patches", "text_global", "text_tokens"):
            assert torch.equal(item[name], batch[name][0]), name
    assert torch.equal(loaded[1]["image_patches"][2], data[7]["image_patches"])
    assert data[-1]["index"] == len(data) - 1
    with pytest.raises(IndexError):
        data[len(data)]


def test_to_datasets_gives_the_items_and_their_globals(small_store, usable):
    import datasets

    _, items, space = usable
    table = to_datasets(small_store, "sc")
    assert isinstance(table, datasets.Dataset) and table.num_rows == items.num_rows
    assert table["item_id"] == items["item_id"].to_pylist()
    assert table["caption_hash"] == items["caption"].to_pylist()
    assert table["negative_captions"] == items["negative_captions"].to_pylist()
    assert table.features["image_global"].feature.dtype == space.spec.dtype  # stored as the space stores it
    as_torch = table.with_format("torch")[:]  # which datasets hands out as float32
    np.testing.assert_array_equal(as_torch["image_global"].numpy(),
                                  space.read("image_global", space.rows("images", items["image"])).astype(np.float32))
    np.testing.assert_array_equal(as_torch["text_global"].numpy(),
                                  space.read("text_global", space.rows("texts", items["caption"])).astype(np.float32))


def test_to_datasets_without_the_package_says_how_to_install_it(small_store, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(VlcacheError, match="pip install datasets"):
        to_datasets(small_store, "sc")


@pytest.mark.parametrize(("make", "message"), [
    (lambda s: ItemStream(s, "nope", batch_size=1), "no dataset 'nope'"),
    (lambda s: ItemDataset(s, "sc", "ViT-X"), "no space 'ViT-X'"),
    (lambda s: to_datasets(s, "sc", "ViT-X"), "no space 'ViT-X'"),
    (lambda s: ItemStream(s, "sc", batch_size=1, rank=2, world_size=2), "rank 2 is not one of world_size 2"),
    (lambda s: ItemStream(s, "sc", batch_size=0), "batch_size"),
    (lambda s: ItemDataset(s, "sc", arrays=["image_values"]), "stores no \\['image_values'\\]"),
    (lambda s: ItemDataset(s, "sc", split="nope"), "no split 'nope'"),
])
def test_bad_arguments_are_one_line(small_store, make, message):
    with pytest.raises(VlcacheError, match=message) as caught:
        make(small_store)
    assert "\n" not in str(caught.value)


def test_the_readme_lines_run_as_written(small_store):
    """README's block, on this store's dataset instead of the demo's."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Into PyTorch and Hugging Face"):]
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    namespace = {}
    exec(code.replace('"runs/demo/store", "world-train"', f'{str(small_store)!r}, "sc"'), namespace)
    assert namespace["state"] == {**namespace["state"], "epoch": 1, "position": len(namespace["stream"])}
    assert namespace["item"]["index"] == 0 and namespace["table"].num_rows == len(namespace["stream"])
