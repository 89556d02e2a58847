"""The end-to-end demo at toy size: it runs, says what it measured, and is reproducible by seed."""

import dataclasses
import json
import os

import pytest

from workflows.demo import DemoConfig, run_demo, run_sweep

pytestmark = pytest.mark.slow


def _toy() -> DemoConfig:
    config = DemoConfig().small()
    heads = {name: {"head": cfg["head"], "train": {**cfg["train"], "steps": 6, "eval_every": 6}}
             for name, cfg in config.heads.items()}
    return dataclasses.replace(config, world=dataclasses.replace(config.world, n_train=96, n_test=24),
                               pretrain=dataclasses.replace(config.pretrain, steps=8, warmup=2), heads=heads,
                               crop_styles=("canvas", "resize"))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return [(root / name, run_demo(str(root / name), _toy(), progress=False, plots=name == "a")) for name in "ab"]


def test_same_seed_gives_the_same_data_and_the_same_metrics(two_runs):
    (a, first), (b, second) = two_runs
    for split in ("train", "test_id", "test_ood"):
        assert (a / "world" / f"{split}.jsonl").read_bytes() == (b / "world" / f"{split}.jsonl").read_bytes()
    assert first["results"] == second["results"]


def test_the_report_states_the_outcome_for_every_method(two_runs):
    (a, summary), _ = two_runs
    report = (a / "report.md").read_text()
    assert "## What this run measured" in report and "bag-of-words-like on swaps" in report
    methods = ("global", "maxsim (no training)", "diagnostic, pooled patches", "diagnostic, pooled values",
               "diagnostic, crops (canvas)", "diagnostic, crops (resize)", "maxsim", "global-mlp", "tflocal")
    assert set(summary["results"]) == set(methods)
    for method in methods:
        assert f"| {method} |" in report
        for split in ("test_id", "test_ood"):  # the hard swap subset, on its own, for every method
            assert "hard swap" in summary["results"][method][split]
    for figure in ("by_type.png", "training.png", "examples.png"):
        assert os.path.getsize(a / figure) > 10_000 and f"({figure})" in report
    assert json.loads((a / "report.json").read_text())["reports"]["tflocal"]["test_ood"]["head"] == "tflocal"


def test_sweep_reports_every_point_for_every_method(tmp_path):
    points = ({"min_objects": 2, "max_objects": 2}, {"min_objects": 3, "max_objects": 3, "attributes": ("colour",)})
    results = run_sweep(str(tmp_path), dataclasses.replace(_toy(), crop_styles=()), points, progress=False)
    assert [p["label"] for p in results] == ["2 objects", "3 objects, colour"]
    two, colour = (json.loads((tmp_path / d / "world" / "world.json").read_text())["config"]
                   for d in ("2-objects", "3-objects-colour"))
    assert two["max_objects"] == 2 and colour["max_objects"] == 3 and colour["attributes"] == ["colour"]
    sweep = (tmp_path / "sweep.md").read_text()
    for name in ("in-domain", "out-of-domain"):
        assert f"## {name}: global cosine against the best other method" in sweep
        assert f"## {name}: hard swap, %" in sweep
    for method in results[0]["results"]:
        rows = [line for line in sweep.splitlines() if line.startswith(f"| {method} |")]
        assert len(rows) == 6  # a row in each split's three tables
    assert os.path.getsize(tmp_path / "sweep.png") > 10_000
    assert json.loads((tmp_path / "sweep.json").read_text())[1]["world"]["test_id"]["total"] == 24
