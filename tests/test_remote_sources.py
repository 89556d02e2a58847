"""`--source-options`: a source on an S3-compatible server (moto on loopback) is read through the options
alone (no AWS_* variable, no ~/.aws), by the readers, the driver's hashing, the workers (their decode
threads and processes) and `vlcache finetune`; it stores what the same files store read locally;
the options are written nowhere; a source the server refuses us is one line naming the option."""

import io
import json
import os
import socket
import sys

import datasets
import fsspec
import pytest
import webdataset
from PIL import Image

from cache_schemas import UnreachableError, VlcacheError, open_store
from pipeline import extract as extract_module
from pipeline.images import read_bytes
from pipeline.readers import FORMATS, SourceOptions, read_source
from pipeline.readers.remote import reaching
from workflows.cli import main

from .conftest import assert_same_content, run_extract
from .test_readers import _source

KEY, SECRET = "vlcache-source-key-id", "vlcache-source-secret-never-written"
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")


@pytest.fixture
def s3(s3_store, monkeypatch, tmp_path):
    """The bucket, the --source-options that reach it, and an s3fs that writes to it. No credentials
    come from anywhere else: no AWS_* variable, no shared files, no instance metadata."""
    uri, options = s3_store
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    endpoint = options["client_kwargs"]["endpoint_url"]
    source_options = {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}
    fs = fsspec.filesystem("s3", **source_options)
    return uri.removeprefix("s3://").split("/")[0], source_options, fs


def _png(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _shards(folder):
    """Three webdataset shards of two captioned images each, written by webdataset's own TarWriter."""
    folder.mkdir()
    for shard in range(3):
        with webdataset.TarWriter(str(folder / f"{shard:05d}.tar")) as tar:
            for i in range(2):
                colour = COLOURS[2 * shard + i]
                tar.write({"__key__": f"{shard}{i:04d}", "png": _png(colour), "txt": f"a {colour} square"})
    return folder


def _extract(source, fmt, store, *options):
    return ["extract", source, "--format", fmt, "--dataset", "d", "--model", "vlcache-tiny", "--store", str(store),
            "--rows-per-shard", "8", "--batch-size", "16", "--quiet", "--json", *options]


def _files_holding(folder, secret):
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                if secret.encode() in f.read():
                    found.append(os.path.join(root, name))
    return found


def test_webdataset_on_s3_stores_what_the_local_shards_store(s3, tmp_path, capfd):
    """Brace-expanded shards on S3, read by the reader, the driver's hashing and the worker's decode
    threads; then a fine-tuning run reads its images again through their tar:// URIs into the S3 shards."""
    bucket, options, fs = s3
    local = _shards(tmp_path / "shards")
    fs.put(str(local) + "/", f"{bucket}/src/", recursive=True)
    reference = tmp_path / "reference"
    run_extract(local / "{00000..00002}.tar", "webdataset", "d", reference)
    capfd.readouterr()

    store = tmp_path / "store"
    source = f"s3://{bucket}/src/{{00000..00002}}.tar"
    assert main(_extract(source, "webdataset", store, "--source-options", json.dumps(options),
                         "--decode-processes", "0")) == 0
    summary = json.loads(capfd.readouterr().out)
    assert summary["images_encoded"] == 6 and summary["failed"] == 0
    assert_same_content(store, reference)
    uris = open_store(store).dataset("d").images["uri"].to_pylist()
    assert all(u.startswith("tar://") and f"::s3://{bucket}/src/0000" in u for u in uris), uris

    (tmp_path / "source.json").write_text(json.dumps(options))
    finetune = ["finetune", "--store", str(store), "--dataset", "d", "--model", "vlcache-tiny", "--split", "",
                "--steps", "2", "--batch-size", "4", "--checkpoint-every", "2", "--device", "cpu", "--quiet"]
    assert main([*finetune, "--out", str(tmp_path / "refused")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "--source-options" in err and "NoCredentialsError" in err, err
    assert main([*finetune, "--out", str(tmp_path / "run"), "--source-options", f"@{tmp_path / 'source.json'}"]) == 0
    assert (tmp_path / "run" / "model.pt").exists()
    for folder in (store, tmp_path / "run"):
        assert _files_holding(folder, SECRET) == [] and _files_holding(folder, KEY) == []


def test_a_parquet_with_embedded_images_on_s3_stores_what_the_local_one_does(s3, tmp_path, capfd):
    """Hub-style shards written by `datasets` (image bytes inside), as a remote folder with a split to
    choose; images read from the remote Parquet by table:// URI in a decode process."""
    bucket, options, fs = s3
    data = tmp_path / "hub" / "data"
    data.mkdir(parents=True)
    pil = [Image.open(io.BytesIO(_png(c))) for c in COLOURS[:4]]
    table = datasets.Dataset.from_dict({"image": pil[:3], "caption": [f"a {c} square" for c in COLOURS[:3]]})
    for i in range(2):
        table.shard(2, i).to_parquet(str(data / f"train-0000{i}-of-00002.parquet"))
    datasets.Dataset.from_dict({"image": pil[3:], "caption": ["held out"]}).to_parquet(
        str(data / "test-00000-of-00001.parquet"))
    fs.put(str(data) + "/", f"{bucket}/hub/data/", recursive=True)
    reference = tmp_path / "reference"
    run_extract(data, "parquet", "d", reference, split="train")
    capfd.readouterr()

    store = tmp_path / "store"
    assert main(_extract(f"s3://{bucket}/hub/data", "parquet", store, "--split", "train",
                         "--source-options", json.dumps(options), "--decode-processes", "1")) == 0
    assert json.loads(capfd.readouterr().out)["images_encoded"] == 3
    assert_same_content(store, reference)
    uris = open_store(store).dataset("d").images["uri"].to_pylist()
    assert all(u.startswith("table://s3") for u in uris), uris
    assert _files_holding(store, SECRET) == [] and _files_holding(store, KEY) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_reader_reads_a_source_on_s3_as_the_same_files_on_disk(fmt, s3, tmp_path):
    bucket, options, fs = s3
    path, root = _source(fmt, tmp_path)
    fs.put(f"{root}/", f"{bucket}/r/", recursive=True)
    remote = f"s3://{bucket}/r" + path[len(root):]
    roots = (root, f"s3://{bucket}/r") if fmt in ("sugarcrepe", "trohn") else (None, None)
    here = read_source(path, fmt, images_root=roots[0])
    there = read_source(remote, fmt, images_root=roots[1], source_options=SourceOptions(options))
    assert [(i.item_id, i.caption, i.negative_captions) for i in there.items] == [
        (i.item_id.replace(root, f"s3://{bucket}/r"), i.caption, i.negative_captions) for i in here.items]
    assert [read_bytes(u, SourceOptions(options)) for u in there.image_uris()] == [
        read_bytes(u) for u in here.image_uris()]


def test_a_local_table_naming_images_on_s3(s3, tmp_path, monkeypatch):
    """--images-root on S3: the workers look at the objects (their ETags) and hash them with the options;
    a second run trusts the unchanged ETags; without the options, one line from the driver."""
    bucket, options, fs = s3
    for colour in COLOURS[:4]:
        fs.pipe(f"{bucket}/images/{colour}.png", _png(colour))
    (tmp_path / "t.csv").write_text("image,caption\n" + "".join(f"{c}.png,a {c} square\n" for c in COLOURS[:4]))
    monkeypatch.setattr(extract_module, "STAMP_BATCH", 2)  # more files than that: the workers stamp them
    root = f"s3://{bucket}/images"
    first = run_extract(tmp_path / "t.csv", "csv", "d", tmp_path / "store", images_root=root, source_options=options)
    assert (first.images_encoded, first.images_read, first.failed) == (4, 4, 0)
    again = run_extract(tmp_path / "t.csv", "csv", "d", tmp_path / "store", images_root=root, source_options=options)
    assert (again.images_trusted, again.images_read, again.images_encoded) == (4, 0, 0)
    with pytest.raises(UnreachableError, match="NoCredentialsError.*--source-options"):
        run_extract(tmp_path / "t.csv", "csv", "d", tmp_path / "other", images_root=root)
    assert not (tmp_path / "other").exists(), "nothing is registered: no store is even created"


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case, expected", [
    ("no options", "NoCredentialsError"),
    ("an endpoint but no key", "NoCredentialsError"),
    ("no server at the endpoint", "EndpointConnectionError"),
])
def test_a_source_the_server_refuses_is_one_line_naming_the_option(case, expected, s3, tmp_path, capfd):
    bucket, options, fs = s3
    fs.put(str(_shards(tmp_path / "shards")) + "/", f"{bucket}/src/", recursive=True)
    given = {"no options": None, "an endpoint but no key": {"endpoint_url": options["endpoint_url"]},
             "no server at the endpoint": {**options, "endpoint_url": f"http://127.0.0.1:{_closed_port()}",
                                           "config_kwargs": {"retries": {"max_attempts": 1}}}}[case]
    store = tmp_path / "store"
    args = _extract(f"s3://{bucket}/src/{{00000..00002}}.tar", "webdataset", store)
    assert main(args + (["--source-options", json.dumps(given)] if given else [])) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot reach the source at s3://"), err
    assert expected in err and "--source-options" in err and "Traceback" not in err, err
    assert not store.exists(), "nothing is registered"


def test_missing_s3fs_is_one_line_naming_the_package(monkeypatch, capfd, tmp_path):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` fails, as where it is not installed
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)  # not imported yet
    with pytest.raises(VlcacheError, match=r"pip install s3fs.*vlcache\[s3\]"):
        read_source("s3://bucket/src/{00000..00001}.tar", "webdataset", source_options=SourceOptions({"key": "k"}))
    assert main(_extract("s3://bucket/src/00000.tar", "webdataset", tmp_path / "store")) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "pip install s3fs" in err, err


def test_options_are_equal_by_value_never_shown_and_refusals_name_them():
    options = SourceOptions({"secret": SECRET, "client_kwargs": {"endpoint_url": "http://x"}})
    assert options == SourceOptions({"client_kwargs": {"endpoint_url": "http://x"}, "secret": SECRET})
    assert hash(options) == hash(SourceOptions(dict(options.options))) and options != SourceOptions()
    assert SECRET not in repr(options) and SECRET not in repr([options])
    assert options.kwargs("tar://k.png::s3://b/00000.tar") == {"s3": options.options}
    assert options.kwargs("/data/00000.tar") == {} and options.kwargs("tar://k.png::/data/00000.tar") == {}
    with pytest.raises(UnreachableError, match=r"s3://b/00000.tar \(PermissionError: Access Denied\); pass --source"):
        with reaching("tar://k.png::s3://b/00000.tar"):  # what s3fs raises for AccessDenied
            raise PermissionError("Access Denied")
    with pytest.raises(PermissionError, match="^denied$"):  # a local file's own error stays the image's
        with reaching("/data/00000.tar"):
            raise PermissionError("denied")


@pytest.mark.parametrize("command", ["extract", "finetune"])
def test_bad_source_options_are_one_line_and_exit_2(command, tmp_path, capfd):
    args = {"extract": _extract(str(tmp_path), "folder", tmp_path / "store"),
            "finetune": ["finetune", "--store", str(tmp_path / "store"), "--dataset", "d", "--model", "vlcache-tiny",
                         "--out", str(tmp_path / "run")]}[command]
    assert main([*args, "--source-options", '["a list"]']) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Invalid value for '--source-options': not a JSON object" in err, err
    assert main([*args, "--source-options", "@no/such.json"]) == 2
    assert "cannot read 'no/such.json'" in capfd.readouterr().err
    assert os.listdir(tmp_path) == []
