"""Damaged metadata (cache_schemas/repair.py, verify.py and the one-line errors of location.py): every
command that meets a damaged file names it in one line, `cache verify` lists it, `cache repair` rebuilds it
(then the store verifies and reads what the undamaged store reads) or says exactly why it cannot."""

import json
import os
import shutil
import time

import numpy as np
import pytest

from cache_schemas import open_store
from cache_schemas.lease import hold
from cache_schemas.repair import repair
from cache_schemas.store import space_lease
from cache_schemas.verify import verify_at
from workflows.cli import main

from .conftest import assert_same_content, run_extract


def _space(store) -> str:
    return f"spaces/{os.listdir(store / 'spaces')[0]}"


def _garbage(path) -> None:
    path.write_bytes(b"\x00garbage, not what was written\xff")


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _stale(path) -> None:
    """A file an atomic write left when it was killed, a few minutes ago (older than any live write)."""
    path.write_bytes(b"half a file")
    past = time.time() - 600
    os.utime(path, (past, past))


def _space_lease_record(store):
    """The newest record of the space's lease."""
    folder = store / "locks" / f"space-{os.listdir(store / 'spaces')[0]}"
    return max(folder.glob("*.json"), key=lambda path: int(path.stem))


# (what is damaged, how, the files (a line names one, verify lists each), whether repair restores them, a fragment
# of repair's line about the first)
CASES = {
    "store manifest garbage": (lambda s: _garbage(s / "vlcache.json"), "vlcache.json", True, "rewrote"),
    "store manifest of the wrong shape": (lambda s: (s / "vlcache.json").write_text("[1, 2]"), "vlcache.json", True,
                                          "rewrote"),
    "dataset manifest garbage": (lambda s: _garbage(s / "datasets/sc/manifest.json"), "datasets/sc/manifest.json",
                                 True, "from the dataset's tables"),
    "dataset manifest without counts": (lambda s: (s / "datasets/sc/manifest.json").write_text('{"counts": 3}'),
                                        "datasets/sc/manifest.json", True, "from the dataset's tables"),
    "space.json garbage": (lambda s: _garbage(s / _space(s) / "space.json"), "space.json", True,
                           "from the copy in its Zarr group's attributes"),
    "space.json deleted": (lambda s: (s / _space(s) / "space.json").unlink(), "space.json", True,
                           "from the copy in its Zarr group's attributes"),
    "index segment truncated": (lambda s: _truncate(s / _space(s) / "index/images-000001.parquet"),
                                "index/images-000001.parquet", True, "rebuilt the index"),
    "index segment garbage": (lambda s: _garbage(s / _space(s) / "index/texts-000001.parquet"),
                              "index/texts-000001.parquet", True, "rebuilt the index"),
    "index manifest garbage": (lambda s: _garbage(s / _space(s) / "index/images.json"), "index/images.json", True,
                               "rebuilt the index"),
    "commit record deleted": (lambda s: (s / _space(s) / "parts/images/000000.parquet").unlink(),
                              "parts/images/000000.parquet", True, "from the index and the shard's arrays"),
    "commit record truncated": (lambda s: _truncate(s / _space(s) / "parts/texts/000001.parquet"),
                                "parts/texts/000001.parquet", True, "from the index and the shard's arrays"),
    "commit record and index both truncated": (
        lambda s: [_truncate(s / _space(s) / p) for p in ("parts/texts/000002.parquet", "index/texts-000001.parquet")],
        ("parts/texts/000002.parquet", "index/texts-000001.parquet"), True, "from its plan and the shard's arrays"),
    "plan garbage": (lambda s: _garbage(s / _space(s) / "plans/texts-000000.parquet"), "plans/texts-000000.parquet",
                     True, "from the commit records of its shards"),
    "stamps garbage": (lambda s: _garbage(s / "datasets/sc/stamps.parquet"), "datasets/sc/stamps.parquet", True,
                       "which the next extraction reads again"),
    "stale .partial": (lambda s: _stale(s / _space(s) / "parts/images/000001.parquet.0f1e2d.partial"),
                       "000001.parquet.0f1e2d.partial", True, "left by a write that was cut short"),
    "lease record garbage, older than the ttl": (lambda s: _stale(_space_lease_record(s)), "locks/space-", True,
                                                 "a lease record, superseded by repair's own"),
    "dataset table truncated": (lambda s: _truncate(s / "datasets/sc/items.parquet"), "datasets/sc/items.parquet",
                                False, "vlcache cache rm"),
    "space.json and its Zarr attributes garbage": (
        lambda s: [_garbage(s / _space(s) / p) for p in ("space.json", "embeddings.zarr/zarr.json")], "space.json",
        False, "embeddings.zarr/zarr.json is not JSON"),
}


def _commands(store, out) -> list[list[str]]:
    return [["cache", "info", str(store)], ["cache", "verify", str(store)], ["cache", "compact", str(store)],
            ["eval", "--store", str(store), "--dataset", "sc", "--head", "global", "--out", str(out), "--device",
             "cpu", "--quiet"]]


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_damaged_metadata_is_named_listed_and_repaired(case, small_store, tmp_path, capsys):
    damage, named, derivable, fragment = CASES[case]
    named = (named,) if isinstance(named, str) else named
    checked, repaired = tmp_path / "checked", tmp_path / "repaired"
    for copy in (checked, repaired):
        shutil.copytree(small_store, copy)
        damage(copy)
    # every command that meets the file: exit 0 (it did not need the file), or one line naming it; never a traceback
    for argv in _commands(checked, tmp_path / "report"):
        code = main(argv)  # an exception here is the traceback a user would have seen
        err = capsys.readouterr().err
        if argv[1] == "verify":  # its report: a problem a line
            assert code == 1 and all(any(n in line for line in err.splitlines()) for n in named), err
        elif code:
            assert any(n in err for n in named) and len(err.strip().splitlines()) == 1, (argv, err)
        elif case.startswith("space.json") and argv[1] == "info":  # a lost spec is named, not a space left out
            raise AssertionError(f"{argv} exited 0")
    report = verify_at(str(repaired))
    assert all(any(n in p for p in report.problems) for n in named), report.problems
    done = repair(str(repaired))
    lines = done.repaired if derivable else done.cannot
    assert any(named[0] in line and fragment in line for line in lines), (done.repaired, done.cannot)
    if derivable:
        assert not done.cannot and verify_at(str(repaired)).ok
        assert_same_content(repaired, small_store)
        _assert_same_reads(repaired, small_store)
        assert repair(str(repaired)).repaired == []  # idempotent: nothing left to do
    else:
        assert main(["cache", "repair", str(repaired)]) == 1
        assert named[0] in capsys.readouterr().err


def _assert_same_reads(store, reference) -> None:
    _assert_same_reads_of(open_store(store), open_store(reference))


def _assert_same_reads_of(mine, theirs) -> None:
    """What a reader gets for the dataset's content: the same rows, bit for bit."""
    dataset = theirs.dataset("sc")
    for opened in (mine, theirs):
        assert opened.dataset("sc").items.equals(dataset.items)
    a, b = mine.space("vlcache-tiny"), theirs.space("vlcache-tiny")
    images, texts = dataset.images["hash"], dataset.texts["hash"]
    for name in a.arrays("images"):
        np.testing.assert_array_equal(a.read(name, a.rows("images", images)), b.read(name, b.rows("images", images)))
    np.testing.assert_array_equal(a.read_tokens(a.rows("texts", texts))[0], b.read_tokens(b.rows("texts", texts))[0])


def test_a_damaged_dataset_table_is_repaired_by_removing_and_extracting_it_again(small_store, small_sugarcrepe,
                                                                                   tmp_path):
    """What repair says to do when it cannot, done: the dataset comes back, its embeddings are not encoded again."""
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    _garbage(store / "datasets/sc/manifest.json")
    _truncate(store / "datasets/sc/texts.parquet")
    assert any("vlcache cache rm" in line for line in repair(str(store)).cannot)
    assert main(["cache", "rm", str(store), "sc"]) == 0  # a damaged manifest does not stop the removal
    annotations, images = small_sugarcrepe
    assert run_extract(annotations, "sugarcrepe", "sc", store, images_root=images).images_encoded == 0
    assert verify_at(str(store)).ok
    assert_same_content(store, small_store)


def test_failed_images_are_recovered_from_the_arrays_when_the_index_and_record_are_lost(tmp_path):
    """A commit record rebuilt from its plan: an image that failed was committed as zeros in every image
    array, so it is recorded as failed again (its message is lost) and the rest read as before."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buffer, format="PNG")
    truncated = buffer.getvalue()[: len(buffer.getvalue()) // 2]  # its header reads: it fails only to decode
    pq.write_table(pa.table({"image": [truncated, buffer.getvalue()], "caption": ["truncated", "whole"]}),
                   tmp_path / "broken.parquet")
    reference = tmp_path / "reference"
    assert run_extract(tmp_path / "broken.parquet", "parquet", "broken", reference).failed == 1
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    (store / _space(store) / "parts/images/000000.parquet").unlink()
    _garbage(store / _space(store) / "index/images-000001.parquet")
    done = repair(str(store))
    assert any("1 rows read back as zeros and are recorded as failed images" in line for line in done.repaired)
    assert verify_at(str(store)).ok
    assert_same_content(store, reference)
    errors = open_store(store).space("vlcache-tiny").errors()
    assert errors["stage"].to_pylist() == ["decode"] and "vlcache cache repair" in errors["message"][0].as_py()


def test_repair_waits_for_the_writer_of_a_space_and_gives_up_in_one_line(small_store, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    (store / _space(store) / "parts/images/000000.parquet").unlink()
    key = os.listdir(store / "spaces")[0]
    with hold(open_store(store).location, space_lease(key), "an extraction"):
        assert main(["cache", "repair", str(store), "--wait", "0"]) == 2
    assert "held by an extraction" in capsys.readouterr().err
    assert (store / "vlcache.json").exists() and not (store / _space(store) / "parts/images/000000.parquet").exists()
    assert main(["cache", "repair", str(store)]) == 0
    assert verify_at(str(store)).ok


def test_repair_waits_for_an_unreadable_lease_record_younger_than_the_ttl(small_store, tmp_path, capsys):
    """A record that may still be being written holds the lease: repair says which file, in one line."""
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    record = _space_lease_record(store)
    _garbage(record)
    assert main(["cache", "repair", str(store), "--wait", "0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"an unreadable lease record, {record} (is not JSON" in err, err
    past = time.time() - 600
    os.utime(record, (past, past))
    assert main(["cache", "repair", str(store)]) == 0 and not record.exists()
    assert verify_at(str(store)).ok


def test_repair_never_makes_a_store(tmp_path, capsys):
    (tmp_path / "project" / "datasets").mkdir(parents=True)  # a folder that merely has a datasets/ in it
    for where in (tmp_path / "missing", tmp_path / "project"):
        assert main(["cache", "repair", str(where)]) == 2
        assert "no vlcache store" in capsys.readouterr().err
        assert not (where / "vlcache.json").exists()
    assert not (tmp_path / "missing").exists()


def test_a_stale_partial_is_removed_by_the_next_writer(small_store, small_sugarcrepe, tmp_path, capsys):
    """What a killed run left goes when the same command runs again: ours, beside the space's metadata and a
    dataset's tables; zarr's, beside the group's and arrays' zarr.json and beside the shard files of the shards
    no segment covers yet: one a worker was writing (pending: no commit record), and those a run committed
    but was killed before it indexed. The writer lists those folders only, never every chunk folder: a partial
    beside an indexed shard (a worker lost mid-write, its shard written by another) is verify's and repair's."""
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    space = store / _space(store)
    for name in os.listdir(space / "index"):  # killed before it indexed its commits
        (space / "index" / name).unlink()
    (space / "parts/images/000001.parquet").unlink()  # and while writing image shard 1
    left = [space / "parts/texts/000002.parquet.1a2b.partial", space / "plans/images-000000.parquet.2b3c.partial",
            space / "index/images.json.4d5e.partial", space / "space.json.6f7a.partial",
            space / "embeddings.zarr/zarr.8b9c.partial", space / "embeddings.zarr/image_cls/zarr.0d1e.partial",
            space / "embeddings.zarr/image_cls/c/1/0.3c4d.partial",  # beside the pending shard's file
            space / "embeddings.zarr/image_patches/c/1/0/0.5e6f.partial",
            space / "embeddings.zarr/text_tokens/c/3/0.7a8b.partial"]  # beside a committed, unindexed shard
    registration = store / "datasets/sc/items.parquet.5e6f.partial"
    for path in [*left, registration]:
        _stale(path)
    assert main(["cache", "gc", str(store), "--collect"]) == 0  # a writer of the space that encodes nothing
    assert not [path for path in left if path.exists()]
    annotations, images = small_sugarcrepe
    assert run_extract(annotations, "sugarcrepe", "sc", store, images_root=images).shards_run == 1
    assert not registration.exists()
    assert_same_content(store, small_store)
    beside_indexed = space / "embeddings.zarr/image_cls/c/0/0.9c0d.partial"
    _stale(beside_indexed)
    assert main(["cache", "compact", str(store)]) == 0
    assert beside_indexed.exists()  # not listed by a writer
    assert any(str(beside_indexed) in p for p in verify_at(str(store)).problems)
    assert main(["cache", "repair", str(store)]) == 0 and not beside_indexed.exists()
    assert str(beside_indexed) in capsys.readouterr().out
    assert json.loads((store / "vlcache.json").read_text())["format"] == "vlcache"


def test_repair_on_an_object_store(small_store, s3_store):
    """The same repair through fsspec on an S3-compatible server (moto on loopback), under its leases."""
    import fsspec

    uri, options = s3_store
    fs, root = fsspec.core.url_to_fs(uri, **options)
    fs.put(f"{small_store}/", root, recursive=True)
    space = f"{root}/{_space(small_store)}"
    fs.rm(f"{space}/parts/images/000000.parquet")
    fs.pipe(f"{space}/index/texts-000001.parquet", b"not parquet")
    fs.pipe(f"{root}/datasets/sc/manifest.json", b"{")
    problems = verify_at(uri, options).problems
    assert len(problems) == 3, problems
    done = repair(uri, options)
    assert len(done.repaired) == 3 and not done.cannot, done
    assert verify_at(uri, options).ok
    _assert_same_reads_of(open_store(uri, storage_options=options), open_store(small_store))
