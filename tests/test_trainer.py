"""The trainer reads only the store: streaming, heads, training, resuming, evaluation."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

from cache_schemas import open_store
from pipeline.encoders import EncoderRequest
from trainer.data import BatchLoader, Examples, LoaderState
from trainer.evaluate import evaluate
from trainer.heads import Dims, build_head
from trainer.train import train
from workflows.cli import main
from workflows.examples import write_sugarcrepe_example

from .conftest import run_extract

TINY_TFLOCAL = {"head": {"width": 64, "layers": 1, "heads": 2},
                "train": {"steps": 80, "batch_size": 32, "lr": 1e-3, "warmup_steps": 10,
                          "eval_every": 1000, "checkpoint_every": 1000, "log_every": 5}}


@pytest.fixture(scope="module")
def swaps(tmp_path_factory):
    """A store where word order matters: every negative swaps the two objects' colours."""
    root = tmp_path_factory.mktemp("swaps")
    for name, seed, n in (("train", 0, 640), ("test", 1, 160)):
        annotations, images = write_sugarcrepe_example(str(root / name), sizes={"swap_att": n}, n_images=n,
                                                       image_size=48, seed=seed)
        run_extract(annotations, "sugarcrepe", name, root / "store", rows_per_shard=64, images_root=images,
                    split="train" if name == "train" else "test")
    config = root / "tflocal.json"
    config.write_text(json.dumps(TINY_TFLOCAL))
    return root / "store", config


def _accuracy(report):
    return report["caption_accuracy"]["by_subset"]["swap_att"]


def test_trained_tflocal_beats_global_and_its_untrained_self(swaps, tmp_path):
    store_path, config = swaps
    reports = train(str(store_path), "train", "tflocal", str(tmp_path / "run"), eval_datasets=["test"],
                    config_path=str(config), progress=False)
    store = open_store(store_path)
    space, test = store.space("vlcache-tiny"), store.dataset("test")
    torch.manual_seed(0)
    untrained = build_head("tflocal", Dims.of(space.spec), TINY_TFLOCAL["head"])
    baseline = _accuracy(evaluate(space, test, build_head("global", Dims.of(space.spec))))
    before = _accuracy(evaluate(space, test, untrained))
    after = _accuracy(reports["test"])
    assert after > max(baseline, before) + 0.2, (after, baseline, before)
    assert os.path.exists(tmp_path / "run" / "eval" / "test" / "report.md")


def test_training_and_evaluation_run_without_any_encoder(swaps, tmp_path):
    store_path, config = swaps
    blocked = ("import sys\n"
               "for name in ('open_clip', 'torchvision', 'pipeline.encoders', 'pipeline.shards', 'pipeline.extract',\n"
               "             'pipeline.finetune.loop'):\n"
               "    sys.modules[name] = None  # importing any of them now fails\n"
               "from workflows.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")
    common = ["--store", str(store_path), "--dataset", "train"]
    small = tmp_path / "small.json"
    small.write_text(json.dumps({**TINY_TFLOCAL, "train": {**TINY_TFLOCAL["train"], "steps": 3}}))
    run = str(tmp_path / "run")
    for args in (["train", *common, "--head", "tflocal", "--out", run, "--config", str(small), "--quiet"],
                 ["eval", *common, "--head", "tflocal", "--checkpoint", run, "--out", str(tmp_path / "r")],
                 ["eval", *common, "--head", "maxsim", "--out", str(tmp_path / "m")]):
        result = subprocess.run([sys.executable, "-c", blocked, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_streaming_memory_stays_within_the_shuffle_buffer(swaps):
    store_path, _ = swaps
    space = open_store(store_path).space("vlcache-tiny")
    examples = Examples.from_dataset(space, open_store(store_path).dataset("train"))
    loader = BatchLoader(space, examples, frozenset({"image.patches", "text.tokens"}), batch_size=8,
                         shuffle_buffer=32, prefetch=0)
    store_bytes = sum(space.array(n).nbytes for n in ("image_patches", "text_tokens"))  # uncompressed
    tracemalloc.start()
    batches = _one_epoch(loader)
    seen = [next(batches).examples for _ in range(3)]  # tables and indexes are read once, up front
    start, _ = tracemalloc.get_traced_memory()
    peaks = []
    for _ in range(2):  # the first half of the epoch, then the second
        tracemalloc.reset_peak()
        seen += [next(batches).examples for _batch in range(37)]
        peaks.append(tracemalloc.get_traced_memory()[1] - start)
    seen = np.concatenate(seen + [b.examples for b in batches])
    end, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # What the loader holds is one window: its items' rows, never more than the buffer's worth.
    item_bytes = 2 * (int(np.prod(space.layouts["image_patches"].row_shape))
                      + 2 * space.spec.context_length * space.spec.text_token_dim)  # image + caption + negative
    assert 0 < loader.max_window_bytes <= loader.shuffle_buffer * item_bytes <= store_bytes / 10
    # Memory does not grow with what has been read: the second half of the epoch peaks no higher
    # than the first, and the epoch leaves at most a window behind.
    assert peaks[1] < 1.5 * peaks[0]
    assert end - start < 2 * loader.max_window_bytes
    assert len(np.unique(seen)) == len(seen) == len(examples) - len(examples) % 8  # each item once per epoch
    # Chunk-aware: a chunk is decoded once per window it reaches (one more only where a window boundary
    # splits its items), where a random order would decode nearly every chunk in every window.
    image_chunks = len(np.unique(examples.image // space.geometry.chunk_rows))
    windows = -(-len(seen) // loader.shuffle_buffer)
    assert loader.chunk_reads["image_patches"] <= image_chunks + windows


@pytest.fixture(scope="module")
def many_chunks(tmp_path_factory):
    """A store many loader windows long, in small chunks (8 rows), so a window spans dozens of chunks;
    float32, so the rows outweigh the fixed cost of zarr's calls, as real encoders' rows do."""
    root = tmp_path_factory.mktemp("many_chunks")
    annotations, images = write_sugarcrepe_example(str(root / "data"), sizes={"swap_att": 3200}, n_images=3200,
                                                   image_size=32, seed=2)
    run_extract(annotations, "sugarcrepe", "train", root / "store", rows_per_shard=8, images_root=images,
                request=EncoderRequest("vlcache-tiny", dtype="float32"))
    return open_store(root / "store")


PEAK_OF_AN_EPOCH = """
import json, sys, tracemalloc
from cache_schemas import open_store
from trainer.data import BatchLoader, Examples
store = open_store(sys.argv[1])
space = store.space("vlcache-tiny")
examples = Examples.from_dataset(space, store.dataset("train"))
loader = BatchLoader(space, examples, frozenset({"image.patches", "text.tokens"}), batch_size=16,
                     shuffle_buffer=400, prefetch=0)
# The baseline: the store open and read once (zarr's event loop and codecs start on a first read)
space.read("image_patches", examples.image[:1]), space.read_tokens(examples.caption[:1])
tracemalloc.start()
baseline, _ = tracemalloc.get_traced_memory()
batches = 0
for batch in loader:
    if batch.epoch > 0:
        break
    batches += 1
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1] - baseline, "window": loader.max_window_bytes,
                  "batches": batches, "items": len(examples)}))
"""


def test_streaming_peak_is_at_most_one_and_a_half_windows(many_chunks):
    """Peak memory over an epoch (measured in a fresh interpreter: nothing else allocating) is the
    window's rows, one batch in the caller's hands and a few chunks decoding: at most 1.5x the window
    over the baseline, on a store several windows long."""
    done = subprocess.run([sys.executable, "-c", PEAK_OF_AN_EPOCH, str(many_chunks.location.uri)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    space = many_chunks.space("vlcache-tiny")
    store_bytes = sum(space.nbytes_committed()[n] for n in ("image_patches", "text_tokens"))
    assert measured["batches"] == measured["items"] // 16 and store_bytes > 5 * measured["window"]
    assert measured["peak"] <= 1.5 * measured["window"], measured


def test_a_resident_loader_gives_the_streamed_batches_and_reads_each_chunk_once(swaps):
    store_path, _ = swaps
    space = open_store(store_path).space("vlcache-tiny")
    examples = Examples.from_dataset(space, open_store(store_path).dataset("train"))
    needs = frozenset({"image.patches", "image.global", "text.tokens", "text.global"})
    streamed = BatchLoader(space, examples, needs, batch_size=8, shuffle_buffer=32, prefetch=0)
    resident = BatchLoader(space, examples, needs, batch_size=8, shuffle_buffer=32, prefetch=1, resident_mb=64)
    too_small = BatchLoader(space, examples, needs, batch_size=8, resident_mb=resident.rows_bytes() / 2**20 / 2)
    assert resident.resident and not streamed.resident and not too_small.resident
    reads = None
    for a, b in zip(streamed, resident):
        assert (a.epoch, a.position) == (b.epoch, b.position) and np.array_equal(a.examples, b.examples)
        for name in ("images", "texts"):
            assert getattr(a, name).keys() == getattr(b, name).keys()
            assert all(torch.equal(getattr(a, name)[k], getattr(b, name)[k]) for k in getattr(a, name))
        for name in ("image_rows", "text_rows", "positive", "negatives", "negative_images"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        reads = reads or dict(resident.chunk_reads)  # everything, read with the first batch
        if a.epoch == 2:
            break
    image_chunks = np.unique(examples.image // space.geometry.chunk_rows)
    assert dict(resident.chunk_reads) == reads and reads["image_patches"] == len(image_chunks)
    assert resident.max_window_bytes == resident.rows_bytes()  # the estimate is what was read


def _one_epoch(loader):
    for batch in loader:
        if batch.epoch > 0:
            return
        yield batch


def test_the_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch(swaps):
    store_path, _ = swaps
    space = open_store(store_path).space("vlcache-tiny")
    examples = Examples.from_dataset(space, open_store(store_path).dataset("train"))
    def make(seed, state=None):
        return BatchLoader(space, examples, frozenset({"image.global", "text.global"}), 16, shuffle_buffer=64,
                           seed=seed, state=state or LoaderState())

    a, b, c = make(0).epoch_order(0), make(0).epoch_order(0), make(1).epoch_order(0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not all(np.array_equal(x, y) for x, y in zip(a, make(0).epoch_order(1)))
    straight = [batch.examples for _, batch in zip(range(12), make(0))]
    resumed = [batch.examples for _, batch in zip(range(5), make(0, LoaderState(0, 7)))]
    assert all(np.array_equal(x, y) for x, y in zip(straight[7:], resumed))


def test_resuming_from_a_checkpoint_continues_the_same_run(swaps, tmp_path):
    store_path, config = swaps
    cfg = {**TINY_TFLOCAL, "train": {**TINY_TFLOCAL["train"], "steps": 20, "checkpoint_every": 10}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    full = tmp_path / "full"
    train(str(store_path), "train", "tflocal", str(full), config_path=str(tmp_path / "cfg.json"), progress=False)
    # An interrupted copy: only the step-10 checkpoint survives.
    half = tmp_path / "half"
    shutil.copytree(full, half)
    shutil.rmtree(half / "checkpoints" / "step-0000020")
    (half / "checkpoint.json").write_text(json.dumps({"latest": "checkpoints/step-0000010"}))
    train(str(store_path), "train", "tflocal", str(half), resume=True, progress=False)
    records = lambda run: [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]  # noqa: E731
    steps = lambda run: {r["step"]: r for r in records(run) if "loss" in r and r["step"] > 10}  # noqa: E731
    for step, expected in steps(full).items():
        got = steps(half)[step]
        assert got["batch_crc"] == expected["batch_crc"]  # the same items, in the same order
        assert got["lr"] == expected["lr"] and got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    a = load_file(full / "checkpoints" / "step-0000020" / "head.safetensors")
    b = load_file(half / "checkpoints" / "step-0000020" / "head.safetensors")
    for name in a:  # equal up to the float noise of multi-threaded CPU reductions
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-3)


def test_ctrl_c_in_train_names_the_command_that_resumes_it(swaps, tmp_path):
    """A real SIGINT once the first checkpoint is written: the line says to add --resume (and drop --seed,
    which a resumed run refuses), and that command finishes the run."""
    store_path, _ = swaps
    cfg = {**TINY_TFLOCAL, "train": {**TINY_TFLOCAL["train"], "steps": 20, "checkpoint_every": 2, "batch_size": 8,
                                      "warmup_steps": 2}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    args = ["train", "--store", str(store_path), "--dataset", "train", "--head", "tflocal", "--out", str(run),
            "--config", str(tmp_path / "cfg.json"), "--device", "cpu", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "workflows.cli", *args, "--seed", "0"], stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert re.fullmatch(rf"interrupted: {re.escape(str(run))} keeps its checkpoint of step \d+; to continue "
                        r"from it, run the same command with --resume and without --seed", last), last
    assert main([*args, "--resume"]) == 0
    assert load_file(run / "checkpoints" / "step-0000020" / "head.safetensors")


def test_periodic_evaluations_print_one_console_line_each_unless_quiet(swaps, tmp_path, capfd):
    store_path, _ = swaps
    cfg = {**TINY_TFLOCAL, "train": {**TINY_TFLOCAL["train"], "steps": 4, "eval_every": 2, "retrieval_k": 0}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    args = ["train", "--store", str(store_path), "--dataset", "train", "--head", "tflocal", "--eval-dataset", "test",
            "--config", str(tmp_path / "cfg.json"), "--device", "cpu"]
    capfd.readouterr()
    assert main([*args, "--out", str(tmp_path / "loud")]) == 0
    printed = [line for line in capfd.readouterr().err.splitlines() if " eval: " in line]
    logged = [json.loads(line)["eval"]["test"] for line in (tmp_path / "loud" / "log.jsonl").read_text().splitlines()
              if "eval" in json.loads(line)]
    assert printed == [f"step {step}/4 eval: test accuracy {100 * e['accuracy']:.1f}%, macro {100 * e['macro']:.1f}%"
                       for step, e in zip((2, 4), logged)], printed
    assert main([*args, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert " eval: " not in capfd.readouterr().err


def test_heads_score_pairs_and_tflocal_is_light_at_vit_b_dims():
    dims = Dims(patches=49, patch_dim=768, text_dim=512, embed_dim=512, context_length=77)
    assert 0.5e6 <= build_head("tflocal", dims).n_parameters() <= 2e6  # the README's figure
    assert build_head("global", dims).n_parameters() == 0
    images = {"patches": torch.randn(3, 49, 768), "global": torch.randn(3, 512)}
    texts = {"tokens": torch.randn(4, 9, 512), "mask": torch.ones(4, 9, dtype=torch.bool),
             "global": torch.randn(4, 512)}
    ii, ti = torch.tensor([0, 1, 2, 2]), torch.tensor([3, 2, 1, 0])
    for name in ("global", "maxsim", "global-mlp", "tflocal"):
        head = build_head(name, dims).eval()
        with torch.no_grad():
            scores = head.score(images, texts, ii, ti)
            assert scores.shape == (4,) and torch.isfinite(scores).all(), name
            single = head.score(images, texts, ii[2:3], ti[2:3])
        torch.testing.assert_close(scores[2:3], single, rtol=1e-4, atol=1e-4)  # a pair's score ignores the others
    cosine = torch.nn.functional.cosine_similarity(images["global"][ii], texts["global"][ti])
    torch.testing.assert_close(build_head("global", dims).score(images, texts, ii, ti), cosine)


def test_parameter_free_maxsim_is_the_mean_of_best_token_matches():
    dims = Dims(patches=2, patch_dim=2, text_dim=2, embed_dim=2, context_length=4)
    head = build_head("maxsim", dims, {"learnable": False})
    images = {"patches": torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])}
    texts = {"tokens": torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]]),
             "mask": torch.tensor([[True, True, False]])}
    score = head.score(images, texts, torch.tensor([0]), torch.tensor([0]))
    torch.testing.assert_close(score, torch.tensor([(1.0 + 2 ** -0.5) / 2]))  # the padded token is ignored


@pytest.mark.parametrize("case, expected", [
    ("unknown dataset", "no dataset 'nope'"),
    ("no negatives", "has no negative captions, and tflocal trains on hard negatives"),
    ("other space", "checkpoint was trained on embedding space vlcache-tiny-"),
    ("untrained head", "must be trained first: pass --checkpoint"),
    ("mistyped setting", "train setting steps must be int, got '10'"),
    ("zero steps", "train setting steps must be >= 1, got 0"),
    ("zero batch", "train setting batch_size must be >= 2, got 0"),
    ("zero log interval", "train setting log_every must be >= 1, got 0"),
    ("zero width", "tflocal setting width must be >= 1, got 0"),
    ("negative layers", "tflocal setting layers must be >= 0, got -1"),
    ("unknown head setting", "unknown tflocal settings ['depth']"),
    ("width and heads", "tflocal width 65 must be a multiple of heads 2"),
])
def test_bad_input_is_refused_clearly(case, expected, swaps, tmp_path, capfd):
    store_path, config = swaps
    if case in ("no negatives", "other space"):
        uris = sorted(open_store(store_path).space("vlcache-tiny").images()["uri"].to_pylist())[:40]
        (tmp_path / "plain.jsonl").write_text("".join(
            json.dumps({"image": p, "caption": f"image {i}"}) + "\n" for i, p in enumerate(uris)))
    if case == "other space":  # the same content, extracted with another encoder spec
        run_extract(tmp_path / "plain.jsonl", "jsonl", "plain", tmp_path / "other",
                    request=EncoderRequest("vlcache-tiny", layer=0))
        train(str(store_path), "train", "tflocal", str(tmp_path / "run"), config_path=str(config), progress=False)
    if case == "no negatives":
        run_extract(tmp_path / "plain.jsonl", "jsonl", "plain", tmp_path / "nonneg")
    bad = {"mistyped setting": {"train": {"steps": "10"}}, "zero steps": {"train": {"steps": 0}},
           "zero batch": {"train": {"batch_size": 0}}, "zero log interval": {"train": {"log_every": 0}},
           "zero width": {"head": {"width": 0}}, "negative layers": {"head": {"layers": -1}},
           "unknown head setting": {"head": {"depth": 3}}, "width and heads": {"head": {"width": 65, "heads": 2}}}
    (tmp_path / "typo.json").write_text(json.dumps(bad.get(case, {})))
    args = {
        "unknown dataset": ["train", "--store", str(store_path), "--dataset", "nope", "--head", "tflocal",
                            "--out", str(tmp_path / "x")],
        "no negatives": ["train", "--store", str(tmp_path / "nonneg"), "--dataset", "plain", "--head", "tflocal",
                         "--out", str(tmp_path / "x"), "--split", ""],
        "other space": ["eval", "--store", str(tmp_path / "other"), "--dataset", "plain", "--head", "tflocal",
                        "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "x")],
        "untrained head": ["eval", "--store", str(store_path), "--dataset", "test", "--head", "tflocal",
                           "--out", str(tmp_path / "x")],
    }.get(case, ["train", "--store", str(store_path), "--dataset", "train", "--head", "tflocal",
                 "--out", str(tmp_path / "x"), "--config", str(tmp_path / "typo.json")])
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "x").exists()  # refused before any work


def test_a_run_that_never_leaves_chance_is_marked_in_its_checkpoint_and_reports(swaps, tmp_path, capfd):
    store_path, _ = swaps
    frozen = tmp_path / "frozen.json"  # a learning rate too small to move anything
    frozen.write_text(json.dumps({"head": TINY_TFLOCAL["head"], "train": {**TINY_TFLOCAL["train"], "steps": 20,
                                                                           "lr": 1e-12}}))
    run = tmp_path / "run"
    capfd.readouterr()
    assert main(["train", "--store", str(store_path), "--dataset", "train", "--head", "tflocal", "--out", str(run),
                 "--config", str(frozen), "--eval-dataset", "test", "--quiet"]) == 0
    err = capfd.readouterr().err
    assert err.startswith("warning: tflocal its training loss stayed at chance") and err.count("\n") == 1, err
    state = json.loads((run / "checkpoints" / "step-0000020" / "state.json").read_text())
    assert state["health"]["status"] == "at chance"
    assert state["health"]["loss"] >= 0.9 * state["health"]["chance_loss"]
    assert "**Warning: this head did not train**" in (run / "eval" / "test" / "report.md").read_text()
    assert main(["eval", "--store", str(store_path), "--dataset", "test", "--head", "tflocal", "--checkpoint",
                 str(run), "--out", str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "report.json").read_text())["training"]["status"] == "at chance"


def test_a_trained_run_is_marked_as_learning(swaps, tmp_path):
    store_path, config = swaps
    train(str(store_path), "train", "tflocal", str(tmp_path / "run"), config_path=str(config), progress=False)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-0000080" / "state.json").read_text())
    assert state["health"]["status"] == "learning" and state["health"]["loss"] < state["health"]["chance_loss"] / 2


def test_a_non_finite_loss_stops_training_and_is_never_saved(swaps, tmp_path, capfd):
    store_path, _ = swaps
    exploding = tmp_path / "explode.json"  # a learning rate that overflows the weights at the first update
    exploding.write_text(json.dumps({"head": TINY_TFLOCAL["head"], "train": {**TINY_TFLOCAL["train"], "lr": 1e20,
                                                                              "warmup_steps": 0, "grad_clip": 1e20}}))
    capfd.readouterr()
    code = main(["train", "--store", str(store_path), "--dataset", "train", "--head", "tflocal",
                 "--out", str(tmp_path / "run"), "--config", str(exploding), "--quiet"])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert re.match(r"error: training stopped at step \d+: the (loss|gradient norm) is (nan|inf)", err), err
    assert not (tmp_path / "run" / "checkpoints").exists()
    last = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "stopped"


@pytest.mark.parametrize("damage", ["nan", "deleted chunk", "flipped bytes"])
def test_damaged_tensors_stop_train_and_eval_with_one_line(damage, swaps, tmp_path, capfd):
    store_path, config = swaps
    damaged = tmp_path / "store"
    shutil.copytree(store_path, damaged)
    key = open_store(damaged).space("vlcache-tiny").key
    array_dir = damaged / "spaces" / key / "embeddings.zarr" / ("image_patches" if damage != "deleted chunk"
                                                                 else "image_global")
    if damage == "nan":
        patches = zarr.open_array(str(array_dir), mode="r+")
        patches[:] = np.full(patches.shape, np.nan, dtype=patches.dtype)
    else:
        chunk = sorted(p for p in array_dir.rglob("*") if p.is_file() and p.name != "zarr.json")[0]  # rows 0...
        if damage == "deleted chunk":
            chunk.unlink()
        else:
            data = bytearray(chunk.read_bytes())
            data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
            chunk.write_bytes(bytes(data))
    command = ["eval", "--head", "global", "--quiet"] if damage == "deleted chunk" else \
        ["train", "--head", "tflocal", "--config", str(config), "--quiet"]
    capfd.readouterr()
    code = main([*command, "--store", str(damaged), "--dataset", "train", "--out", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: space {key}, array "), err
    assert "run vlcache cache verify" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.fixture(scope="module")
def short_run(swaps, tmp_path_factory):
    store_path, _ = swaps
    config = tmp_path_factory.mktemp("short") / "short.json"
    config.write_text(json.dumps({**TINY_TFLOCAL, "train": {**TINY_TFLOCAL["train"], "steps": 4}}))
    run = tmp_path_factory.mktemp("short") / "run"
    train(str(store_path), "train", "tflocal", str(run), config_path=str(config), progress=False)
    return run


def _damage(run, case):
    (latest,) = glob.glob(str(run / "checkpoints" / "step-*"))
    if case == "pointer outside the run":
        (run / "checkpoint.json").write_text(json.dumps({"latest": "../../elsewhere"}))
    elif case == "damaged pointer":
        (run / "checkpoint.json").write_text("{not json")
    else:
        name = {"damaged state": "state.json", "damaged tensors": "head.safetensors",
                "damaged optimizer": "optimizer.pt"}[case]
        with open(os.path.join(latest, name), "r+b") as f:
            f.truncate(os.path.getsize(f.name) // 2)


@pytest.mark.parametrize("case, expected", [
    ("damaged tensors", "the checkpoint in .* cannot be read"),
    ("damaged state", "the checkpoint in .* cannot be read"),
    ("damaged optimizer", "the checkpoint in .* cannot be read"),
    ("damaged pointer", "checkpoint.json is damaged"),
    ("pointer outside the run", "points outside the run's checkpoints/"),
])
def test_a_damaged_run_folder_is_one_line(case, expected, swaps, short_run, tmp_path, capfd):
    store_path, _ = swaps
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    _damage(run, case)
    resume = case == "damaged optimizer"  # only resuming reads the optimizer
    args = (["train", "--store", str(store_path), "--dataset", "train", "--head", "tflocal", "--out", str(run),
             "--resume"] if resume else
            ["eval", "--store", str(store_path), "--dataset", "test", "--head", "tflocal", "--checkpoint", str(run),
             "--out", str(tmp_path / "x"), "--quiet"])
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and re.search(expected, err), err


@pytest.mark.parametrize("case, expected", [
    ("config not utf-8", "is not UTF-8 text"),
    ("config not json", "is not valid JSON"),
    ("unknown device", "'tpu' is not a device"),
])
def test_unreadable_config_and_unknown_device_are_one_line(case, expected, swaps, tmp_path, capfd):
    store_path, _ = swaps
    (tmp_path / "latin1.json").write_bytes('{"train": {"steps": 1}} // é'.encode("latin-1"))
    (tmp_path / "trailing.json").write_text('{"train": {"steps": 1},}', encoding="utf-8")
    extra = {"config not utf-8": ["--config", str(tmp_path / "latin1.json")],
             "config not json": ["--config", str(tmp_path / "trailing.json")],
             "unknown device": ["--device", "tpu"]}[case]
    capfd.readouterr()
    code = main(["train", "--store", str(store_path), "--dataset", "train", "--head", "tflocal",
                 "--out", str(tmp_path / "x"), *extra])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "x").exists()


def test_a_damaged_dataset_table_is_one_line(swaps, tmp_path, capfd):
    store_path, _ = swaps
    damaged = tmp_path / "store"
    shutil.copytree(store_path, damaged)
    items = damaged / "datasets" / "test" / "items.parquet"
    items.write_bytes(items.read_bytes()[: items.stat().st_size // 2])
    capfd.readouterr()
    code = main(["eval", "--head", "global", "--store", str(damaged), "--dataset", "test",
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "items.parquet cannot be read as Parquet" in err, err
