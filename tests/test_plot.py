"""`vlcache plot` (a run's curves, a report's bars) and `vlcache align` (a head's token-patch maps over
the item's image), on a real tiny store and real tiny training runs."""

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cache_schemas import open_store
from trainer.alignment import CaptionMaps, item_maps
from trainer.checkpoint import load
from trainer.heads import Dims, build_head
from trainer.train import train
from workflows import alignment
from workflows.cli import main

from .conftest import run_extract

TINY = {"maxsim": {"head": {"dim": 32}},
        "tflocal": {"head": {"width": 32, "layers": 1, "heads": 2}}}
STEPS = {"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "eval_every": 3, "checkpoint_every": 6,
         "log_every": 2, "retrieval_k": 0}


@pytest.fixture(scope="module")
def world(small_sugarcrepe, tmp_path_factory):
    """The store, a tiny trained run per head (evaluated every 3 steps) and an eval report."""
    annotations, images = small_sugarcrepe
    root = tmp_path_factory.mktemp("plot")
    run_extract(annotations, "sugarcrepe", "sc", root / "store", images_root=images)
    runs = {}
    for head, config in TINY.items():
        (root / f"{head}.json").write_text(json.dumps({**config, "train": STEPS}))
        runs[head] = root / head
        train(str(root / "store"), "sc", head, str(runs[head]), split=None, eval_datasets=["sc"],
              config_path=str(root / f"{head}.json"), device="cpu", progress=False)
    assert main(["eval", "--store", str(root / "store"), "--dataset", "sc", "--head", "maxsim",
                 "--out", str(root / "report"), "--device", "cpu", "--retrieval-k", "0"]) == 0
    return root, runs


def _png(path, min_size=(300, 200)):
    with Image.open(path) as image:
        image.verify()  # a complete, valid PNG
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
        assert np.asarray(image.convert("L")).std() > 5  # something is drawn on it
        return image.size


def test_plot_of_a_run_writes_its_curves_and_its_reports(world, tmp_path, capfd):
    _, runs = world
    capfd.readouterr()
    assert main(["plot", str(runs["tflocal"]), "--out", str(tmp_path)]) == 0
    written = capfd.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in written] == ["training.png", "accuracy-sc.png"]
    width, _ = _png(tmp_path / "training.png")
    assert width > 1200  # two panels: the loss and the periodic evaluations
    _png(tmp_path / "accuracy-sc.png")
    assert main(["plot", str(runs["maxsim"] / "log.jsonl")]) == 0  # the log itself; default: RUN/plots/
    _png(runs["maxsim"] / "plots" / "training.png")


def test_the_run_figure_draws_the_logged_losses_against_chance(world, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workflows import plots

    _, runs = world
    log = str(runs["maxsim"] / "log.jsonl")
    steps = [r for r in plots.read_log(log) if "loss" in r]
    saved = plt.close
    figures = []
    plt.close = lambda fig=None: figures.append(fig)  # keep the figure to read it back
    try:
        plots.training_curves(str(tmp_path / "t.png"), {"maxsim": [log]}, evals=True)
    finally:
        plt.close = saved
    loss, evals = figures[0].axes
    line = loss.get_lines()[0]
    assert list(line.get_xdata()) == [r["step"] for r in steps] == [2, 4, 6]
    assert list(line.get_ydata()) == [r["loss"] for r in steps]
    chance = loss.get_lines()[1].get_ydata()[0]
    assert chance == pytest.approx(np.mean([r["chance_loss"] for r in steps])) and chance > math.log(2)
    assert loss.get_xlabel() == "step" and loss.get_ylabel() == "loss" and "chance" in loss.get_title()
    assert [list(x.get_xdata()) for x in evals.get_lines()] == [[3, 6]]  # eval_every 3
    assert evals.get_ylabel() == "accuracy, %"
    plt.close(figures[0])


def test_plot_of_a_report_writes_accuracy_bars(world, tmp_path, capfd):
    root, _ = world
    report = json.loads((root / "report" / "report.json").read_text())
    chance = report["caption_accuracy"]["chance_by_subset"]
    assert chance["all"] == pytest.approx(0.5)  # one negative caption per item
    for path in (root / "report", root / "report" / "report.json"):
        capfd.readouterr()
        assert main(["plot", str(path), "--out", str(tmp_path)]) == 0
        assert capfd.readouterr().out.strip() == str(tmp_path / "accuracy.png")
        _png(tmp_path / "accuracy.png")


def test_report_bars_leave_room_for_labels_at_100_and_keep_the_legend_off_the_bars(world):
    from workflows import plots

    root, _ = world
    report = json.loads((root / "report" / "report.json").read_text())
    report["caption_accuracy"]["by_subset"] = {s: 1.0 for s in report["caption_accuracy"]["by_subset"]}  # all 100%
    fig = plots.report_figure(report)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    frame = ax.get_window_extent(renderer)
    labels = [t for t in ax.texts if t.get_text() == "100"]
    assert len(labels) == len(report["caption_accuracy"]["by_subset"])
    assert all(t.get_window_extent(renderer).y1 < frame.y1 for t in labels)  # below the frame's top
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= frame.x1 and legend.x1 <= fig.bbox.x1  # beside the bars, inside the picture
    plots.plt.close(fig)


def _texts(space):
    texts = space.texts()
    return dict(zip(texts["text"].to_pylist(), texts["n_tokens"].to_pylist()))


def test_align_draws_a_panel_per_caption_token_over_the_image(world, tmp_path, capfd):
    root, runs = world
    store = open_store(root / "store")
    space, data = store.space(store.space_keys()[0]), store.dataset("sc")
    ids = data.items["item_id"].to_pylist()[:2]
    n_tokens, texts = _texts(space), dict(zip(data.texts["hash"].to_pylist(), data.texts["text"].to_pylist()))
    capfd.readouterr()
    assert main(["align", "--store", str(root / "store"), "--dataset", "sc", "--item", ids[0], "--item", ids[1],
                 "--checkpoint", str(runs["tflocal"]), "--negatives", "--out", str(tmp_path), "--device", "cpu"]) == 0
    lines = capfd.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("labels: the space's tokenizer" in line for line in lines)
    drawn = alignment.align(str(root / "store"), "sc", ids, str(tmp_path), run_dir=str(runs["tflocal"]),
                            negatives=True)
    for item, figure in zip(data.items.to_pylist()[:2], drawn):
        caption, negative = texts[item["caption"]], texts[item["negative_captions"][0]]
        labels = figure.panels["caption"]
        assert len(labels) == n_tokens[caption] and len(figure.panels["negative 1"]) == n_tokens[negative]
        assert labels[0] == "<start>" and labels[-1] == "<end>"
        assert "".join(labels[1:-1]).replace(" ", "") == "".join(caption.lower().split())
        # The picture's geometry is the panels': the image then a panel per token, 8 to a row, per caption.
        columns = min(alignment.COLUMNS, 1 + max(map(len, figure.panels.values())))
        rows = [-(-(1 + len(p)) // columns) for p in figure.panels.values()]
        size = _png(figure.path)
        assert size == (round((1.9 * columns + 0.8) * 90), round((2.0 * sum(rows) + 0.5 * len(rows)) * 90))


def test_align_with_untrained_maxsim_needs_no_run(world, tmp_path, capfd):
    root, _ = world
    item = open_store(root / "store").dataset("sc").items["item_id"][0].as_py()
    capfd.readouterr()
    assert main(["align", "--store", str(root / "store"), "--dataset", "sc", "--item", item, "--head", "maxsim",
                 "--out", str(tmp_path), "--device", "cpu", "--per-panel"]) == 0
    (line,) = capfd.readouterr().out.strip().splitlines()
    png = tmp_path / f"{item.replace('/', '_')}.png"  # item ids such as add_att/0 name files add_att_0.png
    assert line.startswith(str(png)) and "negative" not in line
    _png(png)


def test_maxsim_alignment_is_the_cosine_its_score_is_made_of(world):
    """What the picture shows is what the head computes: the token-patch cosines (through the trained
    projections), whose best match per token, averaged over the caption, is the score."""
    root, runs = world
    store = open_store(root / "store")
    space, data = store.space(store.space_keys()[0]), store.dataset("sc")
    items = data.items.to_pylist()[:3]
    patches = torch.from_numpy(space.read("image_patches", space.rows("images", [i["image"] for i in items]))).float()
    tokens, mask = space.read_tokens_padded(space.rows("texts", [i["caption"] for i in items]))
    images, texts = {"patches": patches}, {"tokens": torch.from_numpy(tokens).float(), "mask": torch.from_numpy(mask)}
    pairs = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 2])
    trained = load(str(runs["maxsim"])).build_head(space).eval()
    free = build_head("maxsim", Dims.of(space.spec), {"learnable": False})  # the tiny space: one token width
    for head in (trained, free):
        with torch.no_grad():
            aligned, score = head.alignment(images, texts, *pairs), head.score(images, texts, *pairs)
            project = (head.image_proj, head.text_proj) if head.config.learnable else (lambda x: x, lambda x: x)
            p, t = F.normalize(project[0](patches), dim=-1), F.normalize(project[1](texts["tokens"]), dim=-1)
        for k, (i, j) in enumerate(zip(*pairs)):
            torch.testing.assert_close(aligned[k], t[j] @ p[i].T)
            n = int(mask[j].sum())
            scale = head.logit_scale.exp() if head.config.learnable else 1.0
            torch.testing.assert_close(score[k], (t[j, :n] @ p[i].T).amax(-1).mean() * scale)
    # and the maps `vlcache align` draws are these cosines, reshaped to the patch grid
    (drawn,) = item_maps(space, data, free, [items[1]["item_id"]])
    grid = math.isqrt(space.spec.dims["patches"])
    n = int(mask[1].sum())
    expected = (t[1, :n] @ p[1].T).reshape(n, grid, grid).numpy()
    np.testing.assert_allclose(drawn.captions[0].maps, expected, rtol=1e-5, atol=1e-5)


def test_tflocal_alignment_is_its_soft_late_interaction_weights(world):
    root, runs = world
    store = open_store(root / "store")
    space, data = store.space(store.space_keys()[0]), store.dataset("sc")
    head = load(str(runs["tflocal"])).build_head(space).eval()
    (drawn,) = item_maps(space, data, head, [data.items["item_id"][0].as_py()], negatives=True)
    for caption in drawn.captions:
        grid = math.isqrt(space.spec.dims["patches"])
        assert caption.maps.shape[1:] == (grid, grid) and (caption.maps >= 0).all()
        np.testing.assert_allclose(caption.maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)  # a softmax over regions
    assert [c.role for c in drawn.captions] == ["caption", "negative 1"]


def test_segment_panels_average_the_tokens_that_spell_them(world):
    root, _ = world
    spec = open_store(root / "store").space(open_store(root / "store").space_keys()[0]).spec
    text = "a red cube and a blue ball"
    labels, how = alignment.token_labels(spec, text, 9)  # <start>, 7 words, <end>
    assert how == "the space's tokenizer" and labels[2:4] == ["red", "cube"]
    maps = np.arange(9 * 4, dtype=np.float32).reshape(9, 2, 2)
    caption = CaptionMaps("caption", text, ["red cube", "blue ball", "a green star"], maps)
    shown, segment_maps, _ = alignment._panels(caption, spec, by_segment=True)
    assert shown == ["red cube", "blue ball"]  # a segment no tokens spell is left out
    np.testing.assert_allclose(segment_maps, [maps[2:4].mean(0), maps[6:8].mean(0)])
    assert alignment._panels(caption, spec, by_segment=False)[0] == labels
    assert alignment.token_labels(spec, text, 7)[1].startswith("the caption's words")  # counts that fit words


@pytest.mark.parametrize("case, expected", [
    ("missing path", "does not exist"),
    ("neither run nor report", "is neither a training run (a folder with log.jsonl"),
    ("damaged log", "log.jsonl is damaged: line 2 is not JSON"),
    ("not a report", "is not an evaluation report"),
    ("unknown item", "dataset sc has no item 'nope'"),
    ("head without alignment", "head global does not align caption tokens with image patches"),
    ("untrained tflocal", "head tflocal must be trained first"),
    ("no head", "pass --checkpoint RUN_DIR, or --head maxsim"),
])
def test_bad_input_is_one_line_and_exit_2(case, expected, world, tmp_path, capfd):
    root, runs = world
    align = ["align", "--store", str(root / "store"), "--dataset", "sc", "--out", str(tmp_path / "out")]
    item = open_store(root / "store").dataset("sc").items["item_id"][0].as_py()
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "notes.txt").write_text("hello")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text('{"event": "start", "head": "maxsim"}\n{not json\n')
    (tmp_path / "other.json").write_text('{"a": 1}')
    args = {"missing path": ["plot", str(tmp_path / "nowhere")],
            "neither run nor report": ["plot", str(tmp_path / "stray")],
            "damaged log": ["plot", str(tmp_path / "run")],
            "not a report": ["plot", str(tmp_path / "other.json")],
            "unknown item": [*align, "--item", "nope", "--head", "maxsim"],
            "head without alignment": [*align, "--item", item, "--head", "global"],
            "untrained tflocal": [*align, "--item", item, "--head", "tflocal"],
            "no head": [*align, "--item", item]}[case]
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "out").exists()


def test_align_segments_draws_a_panel_per_segment_and_refuses_a_dataset_without_them(world, small_sugarcrepe,
                                                                                      tmp_path, capfd):
    root, _ = world
    _, images = small_sugarcrepe
    image = sorted(os.listdir(images))[0]
    (tmp_path / "seg.jsonl").write_text(json.dumps({
        "image": image, "caption": "a red cube left of a blue ball",
        "negative_caption": "a blue cube left of a red ball",
        "caption_segments": ["a red cube", "a blue ball"]}) + "\n")
    run_extract(tmp_path / "seg.jsonl", "jsonl", "seg", tmp_path / "store", images_root=images)
    common = ["align", "--head", "maxsim", "--device", "cpu", "--segments"]
    capfd.readouterr()
    assert main([*common, "--store", str(tmp_path / "store"), "--dataset", "seg", "--item", "0",
                 "--out", str(tmp_path / "seg")]) == 0
    assert "(panels: caption 2;" in capfd.readouterr().out  # "a red cube", "a blue ball"
    item = open_store(root / "store").dataset("sc").items["item_id"][0].as_py()
    assert main([*common, "--store", str(root / "store"), "--dataset", "sc", "--item", item,
                 "--out", str(tmp_path / "sc")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "--segments: dataset sc names no caption segments" in err, err
    assert not (tmp_path / "sc").exists()
