"""The end-to-end demo at toy size: it runs, says what it measured, and is reproducible by seed."""

import dataclasses
import json
import os

import pytest

from workflows.demo import DemoConfig, run_demo

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
