"""Linear probes of cached tokens (trainer/probe.py, workflows/probe.py): on the positive control,
whose tokens carry the binding by construction and whose global embeddings are a bag of words, the
token probes read colour and shape and the global ones cannot."""

import json

import numpy as np
import pytest

from trainer.probe import fit_probe
from workflows.cli import main
from workflows.control import build_control, scaled


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    out = tmp_path_factory.mktemp("control")
    build_control(str(out), scaled(n_train=300, n_test=80))
    return out


def test_a_probe_reads_a_linear_label_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8))
    labels = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no").tolist()
    separable = fit_probe(x[:400], labels[:400], x[400:], labels[400:])
    assert separable.accuracy > 0.95 and separable.classes == 2
    noise = rng.choice(["a", "b", "c"], 600).tolist()
    unreadable = fit_probe(x[:400], noise[:400], x[400:], noise[400:])
    assert unreadable.accuracy < unreadable.chance + 0.1


def test_on_the_control_the_tokens_carry_the_binding_and_the_globals_do_not(control, tmp_path, capsys):
    assert main(["probe", "--store", str(control / "store"), "--world", str(control / "world"),
                 "--prefix", "control", "--out", str(tmp_path)]) == 0
    assert "| image colour | test_ood |" in capsys.readouterr().out
    probes = json.loads((tmp_path / "probe.json").read_text())["probes"]
    assert set(probes) == {"image colour", "image shape", "text colour"}
    for name, by_split in probes.items():
        assert set(by_split) == {"test_id", "test_ood"}
        for split, score in by_split.items():
            token, glob = score["token"], score["global"]
            assert token["n_test"] >= 100 and token["n_test"] == glob["n_test"], (name, split)
            assert token["accuracy"] > 0.9, (name, split, token)
            assert glob["accuracy"] < token["accuracy"] - 0.3, (name, split, glob)
    # Colour-shape pairs never seen in training: the bag of words cannot even guess among what is present.
    unseen = probes["image colour"]["test_ood"]
    assert unseen["global"]["accuracy"] < unseen["unbound_guess"]


@pytest.mark.parametrize("change, message", [
    ({"--world": "STORE"}, "is not a generated world"),
    ({"--prefix": "world"}, "no dataset 'world-train'"),
    ({"--space": "nope"}, "nope"),
])
def test_bad_input_is_one_line(control, tmp_path, capsys, change, message):
    options = {"--store": str(control / "store"), "--world": str(control / "world"), "--prefix": "control",
               "--out": str(tmp_path / "out"), **change}
    if options["--world"] == "STORE":
        options["--world"] = str(control / "store")
    assert main(["probe", *[part for pair in options.items() for part in pair]]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "out").exists()
