"""Run outputs go where `--out` says (cache_schemas/output.py): a training run, its resume and its
evaluation on an S3-compatible server (moto on loopback), with nothing written locally; `--out` values a
command cannot honour, and missing credentials or endpoints, are one line naming the option."""

import json
import os

import pytest
import s3fs

from cache_schemas import Location
from trainer.checkpoint import load
from workflows.cli import main

AWS_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION")
TINY = {"head": {"width": 32, "layers": 1, "heads": 2},
        "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "log_every": 1, "eval_every": 1000,
                  "checkpoint_every": 2}}


@pytest.fixture
def no_aws(monkeypatch):
    """No AWS_* variable: only options given on the command line reach the server."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # and no instance-metadata lookups


@pytest.fixture
def s3(s3_store, small_store, no_aws, monkeypatch, tmp_path):
    """small_store uploaded to the server, and an empty working directory."""
    uri, options = s3_store
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(small_store), uri.removeprefix("s3://"), recursive=True)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return uri, options, fs


def _records(fs, run):
    return [json.loads(line) for line in fs.cat(f"{run}/log.jsonl").decode().splitlines()]


def test_train_resume_and_eval_on_s3_write_nothing_locally(s3, tmp_path, capfd):
    uri, options, fs = s3
    bucket = uri.removeprefix("s3://").split("/")[0]
    run, report = f"s3://{bucket}/runs/m", f"s3://{bucket}/reports/m"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    common = ["--store", uri, "--storage-options", json.dumps(options), "--dataset", "sc", "--device", "cpu"]
    assert main(["train", *common, "--head", "tflocal", "--out", run, "--config", str(config), "--split", "",
                 "--eval-dataset", "sc", "--quiet"]) == 0
    assert capfd.readouterr().out.startswith(f"run in {run}: ")
    assert fs.ls(f"{run}/checkpoints", detail=False) == [f"{run[5:]}/checkpoints/step-000000{s}" for s in (2, 4)]
    assert json.loads(fs.cat(f"{run}/eval/sc/report.json"))["items"] > 0
    full = _records(fs, run)
    assert full[-1]["event"] == "end" and load(Location(run, options)).state["step"] == 4

    # Interrupted after step 2: its later checkpoint gone, the pointer back. --resume reads it from S3.
    fs.rm(f"{run}/checkpoints/step-0000004", recursive=True)
    fs.pipe(f"{run}/checkpoint.json", json.dumps({"latest": "checkpoints/step-0000002"}).encode())
    assert main(["train", *common, "--head", "tflocal", "--out", run, "--split", "", "--eval-dataset", "sc",
                 "--quiet", "--resume"]) == 0
    resumed = _records(fs, run)[len(full):]
    crc = lambda records: {r["step"]: r["batch_crc"] for r in records if "batch_crc" in r and r["step"] > 2}  # noqa: E731
    assert crc(resumed) == crc(full) and len(crc(full)) == 2  # the same batches, in the same order

    assert main(["eval", *common, "--head", "tflocal", "--checkpoint", run, "--out", report, "--quiet"]) == 0
    assert "Caption accuracy" in capfd.readouterr().out
    assert fs.cat(f"{report}/report.md").decode().startswith("# tflocal on sc")
    assert json.loads(fs.cat(f"{report}/report.json"))["checkpoint"] == run

    diag, drawn = f"s3://{bucket}/diag", f"s3://{bucket}/align"
    assert main(["diagnose", *common[:-2], "--regions", "crops", "--out", diag, "--quiet"]) == 0
    assert f"report in {diag}/crops" in capfd.readouterr().out
    assert json.loads(fs.cat(f"{diag}/crops/report.json"))["caption_accuracy"]
    assert main(["align", *common, "--item", "add_att/0", "--checkpoint", run, "--out", drawn]) == 0
    (png,) = fs.ls(drawn, detail=False)
    assert png.endswith(".png") and capfd.readouterr().out.startswith(f"s3://{png}\t")
    assert fs.cat(png).startswith(b"\x89PNG")
    assert os.listdir(".") == [] and sorted(os.listdir(tmp_path)) == ["cwd", "tiny.json"]


def test_a_run_off_the_stores_filesystem_uses_its_own_settings(s3, small_store, tmp_path, monkeypatch, capfd):
    """A local store with its run on S3: the AWS_* variables reach it; without them, one line."""
    uri, options, fs = s3
    bucket = uri.removeprefix("s3://").split("/")[0]
    args = ["eval", "--store", str(small_store), "--dataset", "sc", "--head", "global", "--out",
            f"s3://{bucket}/reports/local-store", "--quiet"]
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "cannot reach --out at s3://" in err and "AWS_ACCESS_KEY_ID" in err, err
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["client_kwargs"]["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret"])
    s3fs.S3FileSystem.clear_instance_cache()
    assert main(args) == 0
    assert json.loads(fs.cat(f"{bucket}/reports/local-store/report.json"))["head"] == "global"
    assert main([*args[:-2], str(tmp_path / "report"), "--quiet"]) == 0  # a local report, plotted onto S3
    capfd.readouterr()
    assert main(["plot", str(tmp_path / "report"), "--out", f"s3://{bucket}/plots"]) == 0
    assert capfd.readouterr().out == f"s3://{bucket}/plots/accuracy.png\n"
    assert fs.cat(f"{bucket}/plots/accuracy.png").startswith(b"\x89PNG")
    assert os.listdir(".") == []


@pytest.mark.parametrize("command", ["eval", "train", "diagnose", "align", "probe", "cache info", "cache verify",
                                     "cache rm", "finetune"])
def test_a_store_without_its_options_is_one_line_naming_them(command, s3_store, no_aws, tmp_path, capfd):
    uri, _ = s3_store
    out = str(tmp_path / "out")
    args = {
        "eval": ["eval", "--store", uri, "--dataset", "sc", "--head", "global", "--out", out],
        "train": ["train", "--store", uri, "--dataset", "sc", "--head", "tflocal", "--out", out],
        "diagnose": ["diagnose", "--store", uri, "--dataset", "sc", "--out", out],
        "align": ["align", "--store", uri, "--dataset", "sc", "--item", "x", "--head", "maxsim", "--out", out],
        "probe": ["probe", "--store", uri, "--world", str(tmp_path), "--out", out],
        "cache info": ["cache", "info", uri], "cache verify": ["cache", "verify", uri],
        "cache rm": ["cache", "rm", uri, "sc"],
        "finetune": ["finetune", "--store", uri, "--dataset", "sc", "--model", "vlcache-tiny", "--out", out],
    }[command]
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot reach the store at {uri} (NoCredentialsError"), err
    assert "pass --storage-options" in err and not os.path.exists(out)


@pytest.mark.parametrize("command, option", [
    ("finetune", "--out"), ("demo", "--out"), ("reproduce", "--out"),
])
def test_an_out_that_must_be_local_is_refused_before_any_work(command, option, tmp_path, capfd):
    args = {
        "finetune": ["finetune", "--store", str(tmp_path), "--dataset", "sc", "--model", "vlcache-tiny"],
        "demo": ["demo", "--small"],
        "reproduce": ["reproduce", "--coco", str(tmp_path), "--sugarcrepe", str(tmp_path), "--bivlc", str(tmp_path),
                      "--trohn", __file__, "--model", "vlcache-tiny"],
    }[command]
    capfd.readouterr()
    assert main([*args, option, "s3://bucket/runs/x"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"'{option}': s3://bucket/runs/x is a URL" in err, err
    assert os.listdir(tmp_path) == []
