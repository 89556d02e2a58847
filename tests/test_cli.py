"""The `vlcache` command as users run it: one-line errors, exit codes, and the cache commands."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from workflows.cli import main


def _extract_args(source, store, **overrides):
    options = {"--format": "sugarcrepe", "--dataset": "sc", "--model": "vlcache-tiny", "--store": str(store)}
    options.update(overrides)
    return ["extract", str(source), *[x for kv in options.items() for x in kv], "--quiet"]


@pytest.mark.parametrize("case, expected", [
    ("missing source", "Path 'no/such/folder' does not exist"),
    ("unknown format", "'sugarcreep' is not one of"),
    ("unknown model", "unknown model 'ViT-B-99'; did you mean"),
    ("unknown tag", "is neither a file nor a tag of ViT-B-32"),
    ("unwritable store", "cannot write the store at /proc/vlcache-store"),
    ("bad source content", "must be an object of entries"),
])
def test_bad_input_gives_one_line_and_exit_2(case, expected, small_sugarcrepe, tmp_path, capfd):
    annotations, _ = small_sugarcrepe
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "swap_att.json").write_text("[1, 2]")
    args = {
        "missing source": _extract_args("no/such/folder", tmp_path / "s"),
        "unknown format": _extract_args(annotations, tmp_path / "s", **{"--format": "sugarcreep"}),
        "unknown model": _extract_args(annotations, tmp_path / "s", **{"--model": "ViT-B-99"}),
        "unknown tag": _extract_args(annotations, tmp_path / "s", **{"--model": "ViT-B-32", "--pretrained": "nope"}),
        "unwritable store": _extract_args(annotations, "/proc/vlcache-store"),
        "bad source content": _extract_args(broken, tmp_path / "s"),
    }[case]
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not os.path.exists(tmp_path / "s"), "nothing is written for a refused command"


def test_the_installed_command_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "workflows.cli", "cache", "info", str(tmp_path / "nothing")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == f"error: no vlcache store at {tmp_path / 'nothing'} (vlcache.json is missing)\n"


def test_info_ls_and_verify_on_a_good_store(small_store, capsys):
    assert main(["cache", "info", str(small_store)]) == 0
    out = capsys.readouterr().out
    assert "28 items" in out and "sc: " in out and "vlcache-tiny [random:0]" in out
    assert main(["cache", "ls", str(small_store)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "dataset sc\t28 items"
    assert main(["cache", "ls", str(small_store.parent)]) == 0
    assert capsys.readouterr().out.strip() == f"store {small_store}"
    assert main(["cache", "verify", str(small_store)]) == 0
    assert capsys.readouterr().out.startswith("ok: checked")


def test_verify_finds_a_corrupted_shard(small_store, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(small_store), str(damaged)], check=True)
    (shard,) = glob.glob(str(damaged / "spaces/*/embeddings.zarr/image_global/c/0/0"))
    with open(shard, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        f.seek(0)
        f.write(data)
    assert main(["cache", "verify", str(damaged)]) == 1
    captured = capsys.readouterr()
    assert "images shard 0: image_global" in captured.err and captured.out.startswith("1 problems")


def test_verify_finds_a_missing_shard(small_store, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(small_store), str(damaged)], check=True)
    for path in glob.glob(str(damaged / "spaces/*/embeddings.zarr/text_tokens/c/1/*")):
        os.remove(path)
    assert main(["cache", "verify", str(damaged)]) == 1
    assert "texts shard 1: text_tokens does not match its checksum" in capsys.readouterr().err


def test_a_store_from_an_unknown_major_version_is_refused(small_store, tmp_path, capfd):
    future = tmp_path / "future"
    subprocess.run(["cp", "-r", str(small_store), str(future)], check=True)
    manifest = json.loads((future / "vlcache.json").read_text())
    (future / "vlcache.json").write_text(json.dumps({**manifest, "schema_version": "2.0"}))
    assert main(["cache", "info", str(future)]) == 2
    assert "store schema version 2.0 is not readable by this vlcache (reads 1.x)" in capfd.readouterr().err
    (future / "vlcache.json").write_text(json.dumps({**manifest, "schema_version": "1.7"}))
    assert main(["cache", "info", str(future)]) == 0  # a newer minor version only adds what old readers ignore


def test_the_choices_the_cli_offers_come_from_the_registries():
    from pipeline.readers import READERS
    from trainer.diagnostic import SOURCES
    from trainer.heads import HEADS
    from workflows.cli import cli

    def choices(command: str, option: str) -> tuple[str, ...]:
        params = {p.name: p for p in cli.commands[command].params}
        return params[option].type.choices

    assert choices("extract", "fmt") == tuple(READERS)
    assert choices("eval", "head") == tuple(HEADS)
    assert choices("train", "head") == tuple(name for name, head in HEADS.items() if head.trains)
    assert choices("diagnose", "sources") == tuple(SOURCES)


def test_slurm_without_sbatch_is_one_line_not_a_hang(small_sugarcrepe, tmp_path, capfd, monkeypatch):
    annotations, images = small_sugarcrepe
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here (the rest of the run needs nothing from PATH)
    capfd.readouterr()
    code = main(_extract_args(annotations, tmp_path / "store", **{"--images-root": images, "--slurm-jobs": "1"}))
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs SLURM's sbatch" in err
    assert not (tmp_path / "store").exists()


def test_a_source_whose_images_all_fail_is_refused_then_fixed(small_sugarcrepe, tmp_path, capfd):
    annotations, images = small_sugarcrepe
    (tmp_path / "wrong").mkdir()
    assert main(_extract_args(annotations, tmp_path / "s", **{"--images-root": str(tmp_path / "wrong")})) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "none of the 11 images could be read" in err and "--images-root" in err
    assert not (tmp_path / "s" / "datasets" / "sc").exists()
    assert main(_extract_args(annotations, tmp_path / "s", **{"--images-root": images})) == 0


def test_cache_rm_then_gc_frees_what_no_dataset_needs(small_store, tmp_path, capfd):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(small_store), str(copy)], check=True)
    assert main(["cache", "rm", str(copy), "sc"]) == 0
    assert capfd.readouterr().out == "removed dataset sc\n"
    assert main(["cache", "info", str(copy)]) == 0
    assert "unreferenced by any dataset: 11 images" in capfd.readouterr().out  # every image it stored
    assert main(["cache", "rm", str(copy), "sc"]) == 2
    assert capfd.readouterr().err.startswith("error: no dataset 'sc'")
    assert main(["cache", "gc", str(copy)]) == 0
    assert re.search(r"11 images and \d+ texts unreferenced; \d+ shards hold nothing else \(--collect frees them\)",
                     capfd.readouterr().out)
    assert main(["cache", "gc", str(copy), "--collect"]) == 0
    assert re.search(r"; collected them, [\d.]+ MB freed", capfd.readouterr().out)
    assert main(["cache", "gc", str(copy)]) == 0
    assert "0 images and 0 texts unreferenced; 0 shards" in capfd.readouterr().out
    assert main(["cache", "verify", str(copy)]) == 0


def test_version_names_the_package_and_the_store_schema(capsys):
    from importlib.metadata import version

    from cache_schemas import SCHEMA_VERSION

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"vlcache {version('vlcache')} (store schema {SCHEMA_VERSION})\n"


def _commands(group, path=("vlcache",)):
    import click

    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_every_option_of_every_command_has_a_help_line(capsys):
    import click

    from workflows.cli import cli

    blank = [f"{' '.join(path)} {'/'.join(p.opts)}" for path, command in _commands(cli) for p in command.params
             if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not blank, blank
    for path, _ in _commands(cli):  # and every --help renders, with the command's own summary
        assert main([*path[1:], "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"Usage: {' '.join(path)} ")
