"""`--storage-options`: every command that opens a store reaches an S3-compatible server (moto on
loopback) through the options alone (no AWS_* variables), inline or from @FILE; bad options are one
line; the options are never written to a file. And eval/diagnose progress bars."""

import json
import os

import pytest

from workflows.cli import main

from .conftest import run_extract

# Distinctive values, so a test can prove they were written nowhere.
KEY, SECRET = "vlcache-test-key-id", "vlcache-test-secret-never-written"
AWS_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION")


@pytest.fixture
def s3(s3_store, monkeypatch):
    """The store's URI and the --storage-options that reach it, with no AWS_* variable set."""
    uri, options = s3_store
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return uri, {"endpoint_url": options["client_kwargs"]["endpoint_url"], "key": KEY, "secret": SECRET}


def _extract(source, store, options_arg, *extra):
    annotations, images = source
    return ["extract", annotations, "--format", "sugarcrepe", "--dataset", "sc", "--model", "vlcache-tiny",
            "--images-root", images, "--store", store, "--storage-options", options_arg, "--rows-per-shard", "8",
            "--batch-size", "8", "--quiet", "--json", *extra]


def test_extract_then_cache_commands_with_inline_options(s3, small_sugarcrepe, capfd):
    uri, options = s3
    inline = json.dumps(options)
    assert main(_extract(small_sugarcrepe, uri, inline)) == 0
    summary = json.loads(capfd.readouterr().out)
    assert summary["images_encoded"] > 0
    assert main(["cache", "verify", uri, "--storage-options", inline]) == 0
    assert capfd.readouterr().out.startswith("ok: checked ")
    assert main(["cache", "info", uri, "--storage-options", inline, "--json"]) == 0
    info = json.loads(capfd.readouterr().out)
    assert info["datasets"]["sc"]["items"] == summary["items"]
    assert main(["cache", "ls", uri, "--storage-options", inline]) == 0
    assert "dataset sc" in capfd.readouterr().out


def test_options_from_a_file_reach_extract_workers_train_and_eval(s3, small_sugarcrepe, tmp_path, capfd):
    """Two worker processes (they get the options with the store's location, not from the environment),
    then a tiny training run and its evaluation read the same store; no file they write holds the secret."""
    uri, options = s3
    (tmp_path / "s3.json").write_text(json.dumps(options))
    from_file = f"@{tmp_path / 's3.json'}"
    assert main(_extract(small_sugarcrepe, uri, from_file, "--workers", "2")) == 0
    assert json.loads(capfd.readouterr().out)["images_encoded"] > 0
    assert main(["cache", "verify", uri, "--storage-options", from_file]) == 0
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"head": {"width": 32, "layers": 1, "heads": 2},
                                  "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "log_every": 1,
                                            "eval_every": 1000, "checkpoint_every": 1000}}))
    run, report = tmp_path / "run", tmp_path / "report"
    common = ["--store", uri, "--storage-options", from_file, "--dataset", "sc", "--device", "cpu"]
    assert main(["train", *common, "--head", "tflocal", "--out", str(run), "--config", str(config),
                 "--split", "", "--quiet"]) == 0
    assert main(["eval", *common, "--head", "tflocal", "--checkpoint", str(run), "--out", str(report),
                 "--retrieval-k", "4", "--quiet"]) == 0
    assert "Caption accuracy" in capfd.readouterr().out
    assert json.loads((report / "report.json").read_text())["items"] > 0
    written = [os.path.join(d, f) for top in (run, report) for d, _, files in os.walk(top) for f in files]
    for path in written:
        with open(path, "rb") as f:
            content = f.read()
        assert SECRET.encode() not in content and KEY.encode() not in content, path
    with open(run / "log.jsonl") as f:
        assert json.loads(f.readline())["store"] == uri  # the URI only: the options are given again


@pytest.mark.parametrize("value, expected", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "not a JSON object ({...}) but an array"),
    ("@no/such/options.json", "cannot read 'no/such/options.json'"),
    ("@BAD_FILE", "is not valid JSON"),
])
@pytest.mark.parametrize("command", ["extract", "train", "eval", "cache info"])
def test_bad_storage_options_are_one_line_and_exit_2(command, value, expected, small_sugarcrepe, tmp_path, capfd):
    bad_file = tmp_path / "bad.json"
    bad_file.write_text('{"key": "x",}')
    value = value.replace("BAD_FILE", str(bad_file))
    store = str(tmp_path / "store")
    args = {
        "extract": _extract(small_sugarcrepe, store, value),
        "train": ["train", "--store", store, "--storage-options", value, "--dataset", "sc", "--head", "tflocal",
                  "--out", str(tmp_path / "run")],
        "eval": ["eval", "--store", store, "--storage-options", value, "--dataset", "sc", "--head", "global",
                 "--out", str(tmp_path / "report")],
        "cache info": ["cache", "info", store, "--storage-options", value],
    }[command]
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert "--storage-options" in err and "a list" not in err  # names the option, never echoes the value
    assert sorted(os.listdir(tmp_path)) == ["bad.json"], "nothing is written for a refused command"


def test_eval_and_diagnose_show_progress_unless_quiet(small_sugarcrepe, tmp_path, capfd):
    annotations, images = small_sugarcrepe
    store = str(tmp_path / "store")
    run_extract(annotations, "sugarcrepe", "sc", store, images_root=images)
    common = ["--store", store, "--dataset", "sc"]
    assert main(["eval", *common, "--head", "global", "--out", str(tmp_path / "e1")]) == 0
    assert "evaluating global" in capfd.readouterr().err
    assert main(["eval", *common, "--head", "global", "--out", str(tmp_path / "e2"), "--quiet"]) == 0
    assert capfd.readouterr().err == ""
    assert main(["diagnose", *common, "--regions", "crops", "--out", str(tmp_path / "d1")]) == 0
    err = capfd.readouterr().err
    assert "encoding crops" in err and "scoring" in err, err
    assert main(["diagnose", *common, "--regions", "crops", "--out", str(tmp_path / "d2"), "--quiet"]) == 0
    assert capfd.readouterr().err == ""


def test_a_location_never_shows_its_options():
    """A Location travels in Dask tasks, and a failed task's log prints its arguments."""
    from cache_schemas.location import Location

    location = Location("s3://bucket/store", {"key": "AKIA-visible", "secret": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(location) and "AKIA-visible" not in repr(location)
    assert "s3://bucket/store" in repr(location)
