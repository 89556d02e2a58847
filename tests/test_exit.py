"""Commands end cleanly on their failing paths: the one-line error and exit 2 in every run, never an abort
as the interpreter exits (exit 134, "terminate called without an active exception", which `align` and
`train` printed after their one line in some runs). Its cause, and what removed it: docs/RELIABILITY.md
(Aborts at exit). Each run is a process of its own, as users run the command; RUNS of one command run a
few at a time, which also loads the machine the way the aborts needed.

The commands here start the threads that aborted, on their failing paths: Arrow's (every command that
reads a store's tables), the trainer's prefetch thread and zarr's (train, eval), zarr's and h5py's
(cache export). Not here, to keep this file to a few minutes: `diagnose`, `probe` and `finetune`, whose
store reads are eval's and train's; `extract`, whose failing paths close its Dask cluster and join its
threads before the command returns (10 runs of it refusing a source with no readable image, 8 s of CPU
each, ended in one line when measured); and commands refused before any thread starts (bad options,
unknown names). Then the two causes, each held to what removed it: how Arrow is given a store's
Parquet, and the prefetch thread."""

import gc
import io
import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

RUNS, AT_ONCE = 10, 3


@pytest.fixture(scope="module")
def damaged(small_store, tmp_path_factory):
    """small_store with flipped bytes in its first image_patches shard and its first image_global shard
    deleted: a read of either fails in one line, after the command's threads have started."""
    path = tmp_path_factory.mktemp("exit") / "store"
    shutil.copytree(small_store, path)
    arrays = next((path / "spaces").iterdir()) / "embeddings.zarr"
    shard = arrays / "image_patches" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    (arrays / "image_global" / "c" / "0" / "0").unlink()
    return path


def _failing(command: str, store: str, damaged: str, out) -> tuple[list[str], str]:
    """The command's failing path, and a fragment of its one line. `out(name)`: a path of this run's."""
    return {
        "align": (["align", "--store", store, "--dataset", "sc", "--item", "no-such-item", "--head", "maxsim",
                   "--out", out("align")], "has no item 'no-such-item'"),
        "train": (["train", "--store", damaged, "--dataset", "sc", "--split", "", "--head", "tflocal",
                   "--out", out("train"), "--quiet"], "array image_patches"),
        "eval": (["eval", "--store", damaged, "--dataset", "sc", "--head", "global", "--out", out("eval"),
                  "--quiet"], "array image_global"),
        "cache export": (["cache", "export", damaged, "--dataset", "sc", out("export.h5")], "run vlcache cache verify"),
    }[command]


@pytest.mark.parametrize("command", ["align", "train", "eval", "cache export"])
def test_a_failing_path_ends_in_one_line_never_an_abort(command, small_store, damaged, tmp_path):
    def run(i: int) -> subprocess.CompletedProcess:
        args, _ = _failing(command, str(small_store), str(damaged), lambda name: str(tmp_path / str(i) / name))
        return subprocess.run([sys.executable, "-m", "workflows.cli", *args], capture_output=True, text=True,
                              timeout=600)

    with ThreadPoolExecutor(AT_ONCE) as pool:
        done = list(pool.map(run, range(RUNS)))
    fragment = _failing(command, "", "", str)[1]
    assert Counter(d.returncode for d in done) == {2: RUNS}, [d.stderr[-400:] for d in done if d.returncode != 2]
    for d in done:
        assert d.stderr.count("\n") == 1 and d.stderr.startswith("error: ") and fragment in d.stderr, d.stderr



def test_arrow_reads_a_local_store_through_its_own_files_and_a_remote_one_in_the_reading_thread(small_store):
    """The cause of the aborts, kept away: Arrow never holds a Python file on its threads (see
    Location.open_parquet). A script reading a store's tables through fsspec files, then ending, aborted
    in 10 of 60 runs, 3 at once; through Location, in none of 60."""
    import pyarrow as pa

    from cache_schemas import Location

    rel = "datasets/sc/items.parquet"
    local = Location(str(small_store))
    with local.open_parquet(rel) as f:
        assert isinstance(f, pa.NativeFile) and local.arrow_threads
    assert local.read_parquet(rel).num_rows == 28
    remote = Location("memory://exit-test")
    remote.fs.pipe(remote.path(rel), (small_store / rel).read_bytes())
    with remote.open_parquet(rel) as f:
        assert not remote.arrow_threads and remote.parquet_file(f).read().num_rows == 28


TABLE_ROWS = 2000  # enough for Arrow's readers to read in blocks and row groups
# What `extract` does first with a source: read it (for Parquet, also one embedded image, as a worker does), and
# here be refused (the table has no caption column). The reader alone: the rest of extract starts no Arrow read.
READ_SOURCE = """
import sys
from cache_schemas import VlcacheError
from pipeline.readers import read_source
from pipeline.readers.embedded import read_table_cell, table_uri
uri, fmt = sys.argv[1], sys.argv[2]
if fmt == "parquet":
    assert read_table_cell(table_uri(uri, "image", 1234)) == b"image 1234"
try:
    read_source(uri, fmt)
except VlcacheError as exc:
    sys.exit(f"error: {exc}")
"""


def _table_file(path, fmt: str) -> None:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet as pq

    images = [f"image {i}".encode() for i in range(TABLE_ROWS)]
    table = pa.table({"image": images if fmt == "parquet" else [f"{i}.png" for i in range(TABLE_ROWS)],
                      "text": [f"a caption {i} " * 8 for i in range(TABLE_ROWS)]})
    if fmt == "csv":
        pyarrow.csv.write_csv(table, path)
    elif fmt == "parquet":
        pq.write_table(table, path, row_group_size=TABLE_ROWS // 4)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_source_read_through_fsspec_ends_in_one_line_never_an_abort(fmt, tmp_path):
    """A source table named by a URL (file:// here: the same fsspec file object an s3:// one is, without the
    S3 client's seconds of start-up), read whole by Arrow, then refused. Before, Parquet read so aborted in 1 of
    30 runs; csv and jsonl in none of 90, though Arrow's threads read their file too."""
    _table_file(tmp_path / f"table.{fmt}", fmt)

    def run(_: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", READ_SOURCE, (tmp_path / f"table.{fmt}").as_uri(), fmt],
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(AT_ONCE) as pool:
        done = list(pool.map(run, range(RUNS)))
    assert Counter(d.returncode for d in done) == {1: RUNS}, [d.stderr[-400:] for d in done if d.returncode != 1]
    for d in done:
        assert d.stderr.count("\n") == 1 and "lacks column(s) ['caption']" in d.stderr, d.stderr


class _PythonFile(io.RawIOBase):
    """A Python file (as fsspec's are) that notes the threads that read it and that release what it gave."""

    def __init__(self, data: bytes, threads: set):
        self.data, self.threads = io.BytesIO(data), threads

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.data.seek(offset, whence)

    def tell(self) -> int:
        return self.data.tell()

    def read(self, size: int = -1) -> bytes:
        self.threads.add(threading.get_ident())
        return _Noted(self.data.read(size), self.threads)


class _Noted(bytearray):
    def __init__(self, data: bytes, threads: set):
        super().__init__(data)
        self.threads = threads

    def __del__(self):
        self.threads.add(threading.get_ident())


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "parquet row group"])
def test_arrow_reads_a_python_file_in_the_calling_thread_only(fmt, tmp_path):
    """The cause, kept away from the sources' readers: what they give Arrow of a Python file (`arrow_stream`,
    `parquet_file`) is read, and released, in the calling thread only. Given the file as it is, Arrow's CSV
    and JSON readers read it on their own threads even with use_threads=False, and so does read_table."""
    import pyarrow.csv
    import pyarrow.json

    from cache_schemas.location import arrow_stream, arrow_threads, parquet_file, parquet_table

    path = tmp_path / f"table.{fmt.split()[0]}"
    _table_file(path, fmt.split()[0])
    threads: set = set()
    f = _PythonFile(path.read_bytes(), threads)
    read = {"csv": lambda: pyarrow.csv.read_csv(arrow_stream(f)), "jsonl": lambda: pyarrow.json.read_json(
        arrow_stream(f)), "parquet": lambda: parquet_table(f), "parquet row group": lambda: parquet_file(
            f).read_row_group(2, use_threads=arrow_threads(f))}[fmt]
    assert read().num_rows == (TABLE_ROWS // 4 if fmt == "parquet row group" else TABLE_ROWS)
    gc.collect()
    assert threads == {threading.get_ident()}


# A loop over a loader left open as the script ends: its prefetch thread is reading on.
PREFETCH_LEFT_OPEN = """
import sys, threading
from cache_schemas import open_store
from trainer.data import BatchLoader, Examples
store = open_store(sys.argv[1])
space = store.space_or_only(None)
loader = BatchLoader(space, Examples.from_dataset(space, store.dataset("sc")), frozenset({"image.patches",
                     "text.tokens"}), batch_size=2, shuffle_buffer=4, prefetch=2)
batches = iter(loader)
next(batches)
prefetch = [t for t in threading.enumerate() if t.name == "vlcache-prefetch"]
print(len(prefetch), prefetch[0].daemon)
"""


def test_a_prefetch_thread_left_reading_ends_with_the_interpreter_not_under_it(small_store):
    """Not a daemon (the interpreter's exit does not cut it mid-read), and it notices the exit (which
    would otherwise wait for it for ever)."""
    done = subprocess.run([sys.executable, "-c", PREFETCH_LEFT_OPEN, str(small_store)], capture_output=True,
                          text=True, timeout=300)
    assert (done.returncode, done.stdout, done.stderr) == (0, "1 False\n", "")
