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
from pipeline.finetune.loop import MODEL_FILE, STATE_FILE
from trainer import checkpoint
from workflows.cli import main
from workflows.control import build_control, scaled

from .conftest import run_extract

KiB, MiB = 1024, 1024 * 1024
# Free space where a writer of the medium set into small_store fails mid-way: after its dataset is
# registered (about 40 KiB) and some of its shards commit, before the rest do (about 300 KiB in all).
MID_SHARDS = 120 * KiB


@pytest.fixture
def disk(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards."""
    yield from _tmpfs(tmp_path, "2m")


@pytest.fixture
def large_disk(tmp_path):
    """A 32 MiB tmpfs: room for fine-tuning's files (vlcache-tiny: state.pt about 14 MiB, model.pt 13 MiB)."""
    yield from _tmpfs(tmp_path, "32m")


def _tmpfs(tmp_path, size: str):
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                              capture_output=True, text=True)
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


def vlcache(*args) -> subprocess.CompletedProcess:
    """The command in a subprocess: a crash is its exit status (139, 134), not the end of the test run."""
    return subprocess.run([sys.executable, "-m", "workflows.cli", *map(str, args)], capture_output=True, text=True)


def assert_fails_disk_full(done: subprocess.CompletedProcess, output) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert_disk_full(done.stderr, output)


def files(root) -> set[str]:
    """Every file under `root` (hidden ones too), relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def partials(root) -> list[str]:
    return [name for name in files(root) if ".partial" in name]


def verifies(store) -> bool:
    return main(["cache", "verify", str(store)]) == 0


def contents(store) -> dict[str, bytes]:
    """Every file of the store but its lease records, with its bytes."""
    return {name: (store / name).read_bytes() for name in files(store) if not name.startswith("locks/")}


def unlisted_segments(store) -> list[str]:
    """Index segments no index manifest lists: written for a manifest that never was."""
    found = []
    for index in store.glob("spaces/*/index"):
        listed = {s["file"] for m in index.glob("*.json") for s in json.loads(m.read_text())["segments"]}
        found += [p.name for p in index.glob("*.parquet") if p.name not in listed]
    return found


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


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    """A tiny positive control (tests/test_probe.py's, smaller): its store and the world it was extracted from."""
    out = tmp_path_factory.mktemp("control")
    build_control(str(out), scaled(n_train=40, n_test=16))
    return out


def _on_disk(store, disk):
    copy = disk / "store"
    shutil.copytree(store, copy)
    return copy


def _space(store):
    (space,) = (store / "spaces").iterdir()
    return space


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


# -- store commands: what they rewrite (leases, index segments and manifests, plans, commit records) ---------

@pytest.mark.parametrize("free", [0, 4 * KiB, 8 * KiB, 16 * KiB])
def test_compact_on_a_full_disk_leaves_the_store_as_it_was_and_completes(free, small_store, disk):
    """A store whose commits no index covers (what an extraction killed before it compacted leaves): 0 KiB
    free fails at the space's lease, 4 KiB at the images' segment, 8 KiB at their manifest (the segment
    written), 16 KiB at the texts' segment (the images indexed, which may stay)."""
    store = _on_disk(small_store, disk)
    shutil.rmtree(_space(store) / "index")
    before = contents(store)
    fill(disk, free)
    assert_fails_disk_full(vlcache("cache", "compact", store), store)
    assert not partials(disk) and not unlisted_segments(store) and verifies(store)
    assert free == 16 * KiB or contents(store) == before
    make_room(disk)
    assert vlcache("cache", "compact", store).returncode == 0 and verifies(store)
    assert {p.name for p in (_space(store) / "index").glob("*.json")} == {"images.json", "texts.json"}


@pytest.mark.parametrize("free", [0, 8 * KiB])
def test_gc_collect_on_a_full_disk_leaves_the_store_as_it_was_and_completes(free, small_store, disk):
    """Every shard is garbage once the only dataset is removed: 0 KiB free fails at the space's lease, 8 KiB
    at the index manifest that drops the first shard (its new segment written)."""
    store = _on_disk(small_store, disk)
    assert main(["cache", "rm", str(store), "sc"]) == 0
    before = contents(store)
    fill(disk, free)
    assert_fails_disk_full(vlcache("cache", "gc", "--collect", store), store)
    assert contents(store) == before and not partials(disk) and verifies(store)
    make_room(disk)
    done = vlcache("cache", "gc", "--collect", store)
    assert done.returncode == 0 and "8 shards hold nothing else; collected them" in done.stdout, done.stderr
    assert verifies(store) and not list(_space(store).glob("parts/*/*"))


def test_rm_on_a_full_disk_keeps_the_dataset_and_completes(small_store, disk):
    """0 KiB free: the datasets' lease cannot be taken, so nothing is removed."""
    store = _on_disk(small_store, disk)
    before = contents(store)
    fill(disk, 0)
    assert_fails_disk_full(vlcache("cache", "rm", store, "sc"), store)
    assert contents(store) == before and not partials(disk) and verifies(store)
    make_room(disk)
    assert vlcache("cache", "rm", store, "sc").returncode == 0 and open_store(str(store)).dataset_names() == []
    assert verifies(store)


@pytest.mark.parametrize("free", [0, 8 * KiB, 12 * KiB])
def test_repair_on_a_full_disk_changes_nothing_and_repairs_once_room_is_made(free, small_store, disk):
    """The images' index segment truncated and a texts commit record deleted: 0 KiB free fails at the
    datasets' lease, 8 KiB at the rebuilt images segment, 12 KiB at its manifest (the segment written).
    verify, on the full disk, still names both."""
    store = _on_disk(small_store, disk)
    segment = _space(store) / "index" / "images-000001.parquet"
    segment.write_bytes(segment.read_bytes()[:100])
    (_space(store) / "parts" / "texts" / "000002.parquet").unlink()
    before = contents(store)
    fill(disk, free)
    assert_fails_disk_full(vlcache("cache", "repair", store), store)
    assert contents(store) == before and not partials(disk)
    done = vlcache("cache", "verify", store)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{segment} cannot be read" in done.stderr and "texts/000002.parquet is missing" in done.stderr
    make_room(disk)
    assert vlcache("cache", "repair", store).returncode == 0 and verifies(store)


# -- runs, reports and figures ------------------------------------------------------------------------

def _train_args(small_store, run, tmp_path, steps: int, *more) -> list[str]:
    """A tflocal head of about 110 KiB a checkpoint (tensors and optimizer; 120 KiB of tmpfs pages with
    its state.json, the pointer and the log), saved every 2 steps."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"head": {"width": 8, "layers": 1, "heads": 2},
                                  "train": {"steps": steps, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2,
                                            "log_every": 1, "eval_every": 1000}}))
    return ["train", "--store", str(small_store), "--dataset", "sc", "--split", "", "--head", "tflocal", "--out",
            str(run), "--config", str(config), "--device", "cpu", "--quiet", *more]


def test_train_on_a_full_disk_keeps_its_last_checkpoint_and_resumes(small_store, disk, tmp_path, capfd):
    """Saved at steps 2 and 4, with room for the first only. The line names it and the command that resumes
    from it: the same one with --resume, less the --seed a resumed run refuses."""
    run = disk / "run"
    args = _train_args(small_store, run, tmp_path, 4)
    fill(disk, 170 * KiB)
    capfd.readouterr()
    assert main([*args, "--seed", "3"]) == 2
    err = capfd.readouterr().err
    assert_disk_full(err, run / "checkpoints" / "step-0000004")
    assert (f"; {run} keeps its checkpoint of step 2 (checkpoints/step-0000002): free some space, then run the "
            "same command with --resume and without --seed to continue from it") in err, err
    assert not partials(disk) and not (run / "checkpoints" / "step-0000004").exists()
    assert checkpoint.load(str(run), with_optimizer=True).state["step"] == 2
    assert all(json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()), "no half a line"
    make_room(disk)
    assert main([*args, "--resume"]) == 0 and checkpoint.load(str(run)).state["step"] == 4


def test_train_on_a_full_disk_before_its_first_line_leaves_no_run_folder(small_store, disk, tmp_path, capfd):
    """0 KiB free: out at the log's first line. The same command again starts the run."""
    run = disk / "run"
    args = _train_args(small_store, run, tmp_path, 2)
    fill(disk, 0)
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert_disk_full(err, run / "log.jsonl")
    assert err.rstrip().endswith("; free some space and run the same command again"), err
    assert os.listdir(disk) == ["filler"]
    make_room(disk)
    assert main(args) == 0 and checkpoint.load(str(run)).state["step"] == 2


def test_train_whose_final_reports_do_not_fit_publishes_them_when_resumed(small_store, disk, tmp_path, capfd):
    """124 KiB free: room for the checkpoint of the last step, for report.json, not report.md after it."""
    run = disk / "run"
    args = _train_args(small_store, run, tmp_path, 2, "--eval-dataset", "sc")
    fill(disk, 124 * KiB)
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert_disk_full(err, run / "eval")
    assert f"{run} keeps its checkpoint of step 2 (checkpoints/step-0000002)" in err and "with --resume" in err, err
    assert not partials(disk) and not (run / "eval").exists()
    make_room(disk)
    assert main([*args, "--resume"]) == 0 and checkpoint.load(str(run)).state["step"] == 2
    report = json.loads((run / "eval" / "sc" / "report.json").read_text())
    assert report["training"] == checkpoint.load(str(run)).state["health"], "the run's health, as it was saved"


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


def test_diagnose_onto_a_full_disk_publishes_no_report(small_store, disk):
    """4 KiB free: room for report.json, not report.md after it."""
    out = disk / "diagnosis"
    fill(disk, 4 * KiB)
    done = vlcache("diagnose", "--store", small_store, "--dataset", "sc", "--regions", "crops", "--out", out, "--quiet")
    assert_fails_disk_full(done, out / "crops")
    assert os.listdir(disk) == ["filler"]


def test_probe_onto_a_full_disk_publishes_no_report(control, disk):
    """4 KiB free: room for probe.json, not probe.md after it."""
    out = disk / "probes"
    fill(disk, 4 * KiB)
    done = vlcache("probe", "--store", control / "store", "--world", control / "world", "--prefix", "control",
                   "--out", out)
    assert_fails_disk_full(done, out)
    assert os.listdir(disk) == ["filler"]


def _finetune_args(small_store, run, every: int) -> list[str]:
    """4 steps, only the last block trained (state.pt about 14 MiB, model.pt 13 MiB)."""
    return ["finetune", "--store", str(small_store), "--dataset", "sc", "--model", "vlcache-tiny", "--split", "",
            "--out", str(run), "--steps", "4", "--batch-size", "8", "--warmup-steps", "1", "--blocks", "1",
            "--checkpoint-every", str(every), "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("every, failing", [(2, STATE_FILE), (4, MODEL_FILE)])
def test_finetune_on_a_full_disk_keeps_its_last_state_and_resumes(every, failing, small_store, large_disk, capfd):
    """20 MiB free: saved every 2 steps, the second state.pt does not fit beside the first; saved at step 4
    only, model.pt does not fit beside it."""
    run = large_disk / "run"
    args = _finetune_args(small_store, run, every)
    fill(large_disk, 20 * MiB)
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert_disk_full(err, run / failing)
    assert (f"; {run} keeps its {STATE_FILE} of step {every}: free some space, then run the same command with "
            "--resume to continue from it") in err, err
    assert files(large_disk) == {"filler", f"run/{STATE_FILE}"}
    assert torch.load(run / STATE_FILE, weights_only=False)["step"] == every
    make_room(large_disk)
    assert main([*args, "--resume"]) == 0
    assert json.loads((run / f"{MODEL_FILE}.json").read_text())["extract"]["pretrained"] == str(run / MODEL_FILE)


def test_finetune_whose_first_state_does_not_fit_leaves_no_run_folder(small_store, large_disk, capfd):
    """8 MiB free: the first state.pt (about 14 MiB) does not fit. The same command again starts the run."""
    run = large_disk / "run"
    args = _finetune_args(small_store, run, 2)
    fill(large_disk, 8 * MiB)
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert_disk_full(err, run / STATE_FILE)
    assert err.rstrip().endswith("; free some space and run the same command again"), err
    assert os.listdir(large_disk) == ["filler"]
    make_room(large_disk)
    assert main(args) == 0 and (run / MODEL_FILE).exists()


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
