"""Every writer on a full disk: one line naming its output and saying the disk is full, exit 2, no
traceback and no crash, nothing half-written left (no `.partial`, no half a file, no half a checkpoint or
report), and what was committed before still whole (`cache verify`, the last checkpoint).

The disk is a 2 MiB tmpfs (mounting one needs root; elsewhere these tests skip, saying why), filled to
`free` bytes short of full by a filler file. Where a writer runs out is set by sizes, not moments: its
output is the same size on every run, so each case fails at the same point every time."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from cache_schemas import Location, lease, open_store
from cache_schemas.errors import DiskFullError
from cache_schemas.exchange import export_hdf5
from cache_schemas.location import atomic_file
from trainer import checkpoint
from workflows.cli import main

from .conftest import run_extract

KiB = 1024
# Free space where a writer of the medium set into small_store fails mid-way: after its dataset is
# registered (about 40 KiB) and some of its shards commit, before the rest do (about 300 KiB in all).
MID_SHARDS = 120 * KiB


@pytest.fixture
def disk(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                              text=True)
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs to fill ({exc})")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs to fill ({(done.stderr or done.stdout).strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(disk, free: int) -> None:
    """Leave `free` bytes on `disk` (rounded down to its pages)."""
    stat = os.statvfs(disk)
    with open(disk / "filler", "ab") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - free))


def make_room(disk) -> None:
    (disk / "filler").unlink()


def assert_disk_full(err: str, output) -> None:
    assert err.count("\n") == 1 and err.startswith("error: the disk is full") and str(output) in err, err
    assert "Traceback" not in err


def files(root) -> set[str]:
    """Every file under `root` (hidden ones too), relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def partials(root) -> list[str]:
    return [name for name in files(root) if ".partial" in name]


def verifies(store) -> bool:
    return main(["cache", "verify", str(store)]) == 0


@pytest.fixture(scope="module")
def earlier_export(small_store, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "sc.h5"
    export_hdf5(open_store(str(small_store)), "sc", None, str(path))
    return path


@pytest.fixture(scope="module")
def more_export(medium_sugarcrepe, tmp_path_factory):
    """An HDF5 export of content small_store lacks (the medium set)."""
    annotations, images = medium_sugarcrepe
    root = tmp_path_factory.mktemp("more")
    run_extract(annotations, "sugarcrepe", "more", root / "store", images_root=images)
    export_hdf5(open_store(str(root / "store")), "more", None, str(root / "more.h5"))
    return root / "more.h5"


def _on_disk(store, disk):
    copy = disk / "store"
    shutil.copytree(store, copy)
    return copy


# -- exports ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("free", [0, 4 * KiB, 16 * KiB])
def test_an_hdf5_export_onto_a_full_disk_is_one_line_and_keeps_the_earlier_export(free, small_store, earlier_export,
                                                                                   disk):
    """h5py left with a failed write segfaulted closing the file (exit 139) and left `.out.h5.partial`.
    In a subprocess: a crash must not take the test run with it."""
    out = disk / "out.h5"
    shutil.copy(earlier_export, out)
    fill(disk, free)
    done = subprocess.run([sys.executable, "-m", "workflows.cli", "cache", "export", str(small_store), str(out),
                           "--dataset", "sc", "--force"], capture_output=True, text=True)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert_disk_full(done.stderr, out)
    assert files(disk) == {"filler", "out.h5"} and out.read_bytes() == earlier_export.read_bytes()


@pytest.mark.parametrize("free", [0, 8 * KiB])
def test_a_clip_retrieval_export_onto_a_full_disk_is_one_line(free, small_store, disk, capfd):
    out = disk / "clip"
    fill(disk, free)
    capfd.readouterr()
    assert main(["cache", "export", str(small_store), str(out), "--dataset", "sc", "--format", "clip-retrieval"]) == 2
    assert_disk_full(capfd.readouterr().err, out)
    assert files(disk) == {"filler"} and os.listdir(disk) == ["filler"]


# -- writers into a store -----------------------------------------------------------------------------

def test_extract_onto_a_full_disk_keeps_what_was_committed_and_resumes(small_store, medium_sugarcrepe, disk, capfd):
    """The one line was hidden behind a second ENOSPC raised while the space's lease was released."""
    annotations, images = medium_sugarcrepe
    store = _on_disk(small_store, disk)
    fill(disk, MID_SHARDS)
    args = ["extract", annotations, "--format", "sugarcrepe", "--images-root", images, "--dataset", "more",
            "--model", "vlcache-tiny", "--store", str(store), "--quiet"]
    capfd.readouterr()
    assert main(args) == 2
    assert_disk_full(capfd.readouterr().err, store)
    assert not partials(disk) and verifies(store)
    assert open_store(str(store)).dataset_names() == ["more", "sc"], "failed among the shards, as meant"
    make_room(disk)
    assert main(args) == 0 and verifies(store)


@pytest.mark.parametrize("free", [0, MID_SHARDS])
def test_import_onto_a_full_disk_keeps_what_was_committed_and_resumes(free, small_store, more_export, disk, capfd):
    store = _on_disk(small_store, disk)
    fill(disk, free)
    capfd.readouterr()
    assert main(["cache", "import", str(more_export), "--store", str(store)]) == 2
    assert_disk_full(capfd.readouterr().err, store)
    assert not partials(disk) and verifies(store)
    assert open_store(str(store)).dataset_names() == (["sc"] if free == 0 else ["more", "sc"])
    assert not (store / "datasets" / "more").exists() or (store / "datasets" / "more" / "manifest.json").exists(), \
        "a dataset's tables without their manifest are removed"
    make_room(disk)
    assert main(["cache", "import", str(more_export), "--store", str(store)]) == 0 and verifies(store)


def test_a_lease_that_cannot_be_marked_released_is_freed_and_the_first_error_kept(disk):
    location = Location(str(disk / "store"))
    with pytest.raises(RuntimeError, match="the shard failed"):
        with lease.hold(location, "space-x", "a writer"):
            fill(disk, 0)
            raise RuntimeError("the shard failed")
    assert location.listdir("locks/space-x") == [], "removed, since it could not be marked released"
    make_room(disk)
    with lease.hold(location, "space-x", "the next writer", wait=0):  # free at once, not after its ttl
        pass


# -- runs, reports and figures ------------------------------------------------------------------------

def test_train_on_a_full_disk_keeps_its_last_checkpoint_and_resumes(small_store, disk, tmp_path, capfd):
    """A tflocal head of about 110 KiB a checkpoint (tensors and optimizer), saved at steps 2 and 4, with
    room for the first only."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"head": {"width": 8, "layers": 1, "heads": 2},
                                  "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2,
                                            "log_every": 1, "eval_every": 1000}}))
    run = disk / "run"
    args = ["train", "--store", str(small_store), "--dataset", "sc", "--split", "", "--head", "tflocal", "--out",
            str(run), "--config", str(config), "--device", "cpu", "--quiet"]
    fill(disk, 170 * KiB)
    capfd.readouterr()
    assert main(args) == 2
    assert_disk_full(capfd.readouterr().err, run / "checkpoints" / "step-0000004")
    assert not partials(disk) and not (run / "checkpoints" / "step-0000004").exists()
    assert checkpoint.load(str(run), with_optimizer=True).state["step"] == 2
    assert all(json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()), "no half a line"
    make_room(disk)
    assert main([*args, "--resume"]) == 0 and checkpoint.load(str(run)).state["step"] == 4


@pytest.mark.parametrize("command", ["eval", "plot", "align"])
def test_a_report_or_figures_onto_a_full_disk_are_all_or_nothing(command, small_store, disk, tmp_path, capfd):
    """4 KiB free: room for report.json, not report.md after it; for no PNG."""
    store = str(small_store)
    report = tmp_path / "report"
    assert main(["eval", "--store", store, "--dataset", "sc", "--head", "global", "--out", str(report), "--quiet"]) == 0
    item = open_store(store).dataset("sc").items["item_id"][0].as_py()
    out = disk / "out" / command
    out.parent.mkdir()
    (out.parent / "earlier.txt").write_text("kept")
    args = {"eval": ["eval", "--store", store, "--dataset", "sc", "--head", "global", "--out", str(out), "--quiet"],
            "plot": ["plot", str(report), "--out", str(out)],
            "align": ["align", "--store", store, "--dataset", "sc", "--item", item, "--head", "maxsim", "--out",
                      str(out)]}[command]
    fill(disk, 4 * KiB)
    capfd.readouterr()
    assert main(args) == 2
    assert_disk_full(capfd.readouterr().err, out)
    assert files(disk) == {"filler", "out/earlier.txt"}


def test_a_file_is_written_whole_or_not_at_all(disk):
    """What finetune's state.pt and model.pt, and every figure, are written through: torch's save says
    the disk is full only as the context of its own RuntimeError."""
    path = disk / "model.pt"
    path.write_bytes(b"the earlier model")
    fill(disk, 8 * KiB)
    with pytest.raises(DiskFullError, match=f"the disk is full: .* {path};"):
        with atomic_file(str(path)) as f:
            torch.save({"weights": torch.zeros(100_000)}, f)
    assert path.read_bytes() == b"the earlier model" and files(disk) == {"filler", "model.pt"}
