"""The `vlcache` command. Thin: each command parses options and calls a library function.

User mistakes print one line ("error: ...") and exit 2; `cache verify` exits 1 on a damaged store;
Ctrl-C exits 130 and keeps every committed shard."""

from __future__ import annotations

import faulthandler
import json
import os
import re
import sys
from collections.abc import Callable, Iterable

import click

from cache_schemas import SCHEMA_VERSION, VlcacheError
from cache_schemas.errors import disk_full, is_disk_full, resume_command
from pipeline.finetune.config import FinetuneConfig

FINETUNE_DEFAULTS = FinetuneConfig()


class RegistryChoice(click.Choice):
    """A choice among the names of a registry, imported only when the option is parsed or shown, so
    that commands which never use it never import it (`cache ls` does not pay for torch)."""

    def __init__(self, names: Callable[[], Iterable[str]]):
        self._names = names
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, _ignored) -> None:
        pass


def _formats() -> Iterable[str]:
    from pipeline.readers import READERS

    return READERS


def _heads(trainable: bool = False) -> Iterable[str]:
    from trainer.heads import HEADS

    return [name for name, head in HEADS.items() if not trainable or head.trains]


def _world_encoders() -> Iterable[str]:
    from workflows.demo import WORLD_ENCODERS

    return WORLD_ENCODERS


def _region_sources() -> Iterable[str]:
    from trainer.diagnostic import SOURCES

    return SOURCES


class Device(click.ParamType):
    """Checked where the command is read: a device torch cannot name would otherwise fail only inside
    the workers, after the dataset and its plans were written."""

    name = "device"

    def convert(self, value, param, ctx):
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            self.fail(f"{value!r} is not a device: auto, cpu, cuda, cuda:N or mps", param, ctx)
        return value


device_option = click.option("--device", type=Device(), default="auto", show_default=True,
                             help="auto, cpu, cuda, cuda:N or mps.")


class StorageOptions(click.ParamType):
    """fsspec options for a filesystem (the store's, a source's): a JSON object, or @FILE holding one
    (keeps keys out of the shell history). Checked when the command is read, so a bad value writes nothing."""

    name = "json"
    JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        what = "not"  # the value itself is never echoed: it may hold a secret
        if value.startswith("@"):
            path = value[1:]
            what = f"{path} is not"
            try:
                with open(path, encoding="utf-8") as f:
                    value = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                self.fail(f"cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}", param, ctx)
        try:
            options = json.loads(value)
        except json.JSONDecodeError as exc:
            self.fail(f"{what} valid JSON ({exc}); expected a JSON object or @FILE.json", param, ctx)
        if not isinstance(options, dict):
            kind = self.JSON_KINDS.get(type(options), "a number")
            self.fail(f"{what} a JSON object ({{...}}) but {kind}", param, ctx)
        return options


storage_options_option = click.option(
    "--storage-options", "storage_options", type=StorageOptions(), default=None,
    help='fsspec options for the store, as JSON or @FILE.json, e.g. \'{"endpoint_url": "http://host:9000", '
         '"key": "...", "secret": "..."}\'. Never written to any file: pass them again on every command.')
source_options_option = click.option(
    "--source-options", "source_options", type=StorageOptions(), default=None,
    help="fsspec options for the filesystem the source and its images are on (s3://...), as JSON or @FILE.json "
         "like --storage-options. Never written to any file.")


space_option = click.option("--space", "space_key", default=None,
                            help="Embedding space key, when the store holds several (vlcache cache ls lists them).")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a command that knows how it resumes: the text is the line after "interrupted: "."""


def _run_interrupted(out: str, saved: str | None, resumed: bool, seed_given: bool = False) -> Interrupted:
    """How a run folder's command continues after Ctrl-C: with --resume from what it `saved` (a refused
    option left out), or, before its first save, the same command again, which starts it over."""
    if saved is None:
        return Interrupted(f"{out} holds no saved state yet; rerun the same command to start the run again")
    return Interrupted(f"{out} keeps {saved}; to continue from it, run {resume_command(resumed, seed_given)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vlcache", message=f"%(prog)s %(version)s (store schema {SCHEMA_VERSION})")
def cli() -> None:
    """vlcache: extract frozen vision-language embeddings once, reuse them everywhere."""


class SourcePath(click.Path):
    """A local path that must exist, or an fsspec URL / shard pattern (s3://b/{00000..00009}.tar) left
    for the reader to resolve."""

    def __init__(self):
        super().__init__(exists=True)

    def convert(self, value, param, ctx):
        if "://" in value or any(c in value for c in "{*?"):
            return value
        return super().convert(value, param, ctx)


class LocalFolder(click.Path):
    """An --out that must be a local folder: refused in one line, before any work, when given a URL."""

    def __init__(self, why: str):
        super().__init__(file_okay=False)
        self.why = why

    def convert(self, value, param, ctx):
        if "://" in str(value):
            self.fail(f"{value} is a URL, but {self.why}: give a local folder (and copy it up after)", param, ctx)
        return super().convert(value, param, ctx)


class ByteSize(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        from cache_schemas.chunk_cache import parse_size

        try:
            return value if isinstance(value, int) else parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def cache_options(command):
    """--cache-dir and --cache-size, for commands that read a store's tensors (cache_schemas/chunk_cache.py)."""
    command = click.option("--cache-size", type=ByteSize(), default="20GB", show_default=True,
                           envvar="VLCACHE_CACHE_SIZE", help="Most the --cache-dir folder holds; least recently "
                           "used chunks go first (500MB, 20GB, ...) [env VLCACHE_CACHE_SIZE].")(command)
    return click.option("--cache-dir", type=click.Path(file_okay=False), default=None, envvar="VLCACHE_CACHE_DIR",
                        help="Keep a remote store's chunk files in this local folder, so each is read over the "
                        "network once per machine (shared by processes) [env VLCACHE_CACHE_DIR].")(command)


def _chunk_cache(cache_dir: str | None, cache_size: int):
    from cache_schemas import ChunkCache

    return ChunkCache(cache_dir, cache_size) if cache_dir else None


@cli.command()
@click.argument("source", type=SourcePath())
@click.option("--format", "fmt", type=RegistryChoice(_formats), required=True, help="How to read SOURCE.")
@click.option("--dataset", required=True, help="Name of the dataset in the store.")
@click.option("--model", required=True, help="open_clip model name, e.g. ViT-B-32 or vlcache-tiny (or the name "
              "a plug-in --encoder understands).")
@click.option("--encoder", default="open_clip", show_default=True,
              help="The encoder family: open_clip, or module:Class naming a pipeline.encoders.Encoder subclass.")
@click.option("--pretrained", default=None,
              help="Pretrained tag (e.g. openai) or local checkpoint path; random init if omitted.")
@click.option("--store", "store_uri", required=True, help="Store path or fsspec URL (s3://bucket/store).")
@storage_options_option
@source_options_option
@click.option("--images-root", type=click.Path(file_okay=False), default=None,
              help="Folder that relative image paths are under [default, tables: the table's own folder].")
@click.option("--image-column", default="image", show_default=True,
              help="Tables: the column of image paths (or bytes); open_clip's lists call it filepath, "
                   "img2dataset's Parquet jpg.")
@click.option("--caption-column", default="caption", show_default=True,
              help="Tables: the caption column; open_clip's lists call it title.")
@click.option("--separator", default=None, help="csv/tsv: the field separator [default: ',' for csv, tab for tsv].")
@click.option("--split", default=None,
              help="Tables: the split to read where the source holds several (a datasets DatasetDict folder, hub "
                   "shards named <split>-00000-of-00004.parquet); else the split of items whose source names none.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local Dask workers (one per GPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads per local worker [default: 2 where a GPU encodes, else 1].")
@click.option("--scheduler-address", default=None, help="Use an existing Dask scheduler instead of a local cluster.")
@click.option("--slurm-jobs", type=click.IntRange(min=0), default=0,
              help="Run on this many SLURM jobs, one Dask worker each (settings: dask's jobqueue.slurm).")
@click.option("--slurm-replacements", type=click.IntRange(min=0), default=10, show_default=True,
              help="Jobs that may be submitted in place of jobs that end mid-run (cancelled, preempted, walltime).")
@click.option("--worker-wait", type=click.FloatRange(min=0), default=600, show_default=True,
              help="Seconds a run may go without any worker (SLURM jobs or an existing scheduler) before it "
                   "ends; rerunning resumes.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images (or texts) per encoder forward.")
@click.option("--decode-processes", type=click.IntRange(min=0), default=None,
              help="Decode images in this many processes per worker (0: in threads) [default: where a GPU "
                   "encodes, the worker's cores but two; else threads].")
@device_option
@click.option("--rows-per-shard", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Rows per shard: the unit of work, commit and resume (fixed when a space is created).")
@click.option("--tokens", default=None,
              help="Image tokens to store: patches, cls, values [default: patches, and cls where the tower has one].")
@click.option("--tokenizer", "tokenizer", type=click.Path(exists=True, file_okay=False), default=None,
              help="A local copy of a tokenizer open_clip would fetch from the Hugging Face hub (SigLIP, SigLIP2).")
@click.option("--layer", type=int, default=-1, show_default=True, help="Block whose tokens are stored (-1 = last).")
@click.option("--projected/--raw", default=False, show_default=True, help="Project tokens into the joint space.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="How embeddings are stored.")
@click.option("--retry-failed", is_flag=True, help="Try images that failed in an earlier run again.")
@click.option("--rehash", is_flag=True, help="Read and hash every image again, even files whose size and "
              "modification time (or ETag) are what the dataset's last run saw.")
@click.option("--replace", is_flag=True, help="Replace a dataset of the same name whose content differs "
              "(after fixing its source); its embeddings already stored are kept and reused.")
@click.option("--wait", type=click.FloatRange(min=0), default=3600, show_default=True,
              help="Seconds to wait while another extraction writes the same space, then give up.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def extract(source, fmt, dataset, model, encoder, pretrained, store_uri, storage_options, images_root, image_column,
            caption_column, separator, split, workers, threads, scheduler_address, slurm_jobs, slurm_replacements,
            worker_wait, batch_size,
            decode_processes, device, rows_per_shard, tokens, tokenizer, layer, projected, dtype, retry_failed, replace,
            rehash, wait, as_json, quiet, source_options) -> None:
    """Encode SOURCE's unique images and texts into the store, once per encoder."""
    from pipeline.cluster import ClusterConfig
    from pipeline.encoders import EncoderRequest
    from pipeline.extract import ExtractOptions
    from pipeline.extract import extract as run_extract
    from pipeline.readers import ReaderOptions

    image_tokens = tuple(t.strip() for t in tokens.split(",") if t.strip()) if tokens else None
    request = EncoderRequest(model, pretrained, image_tokens, layer, projected, dtype, encoder, tokenizer)
    summary = run_extract(
        source, fmt, dataset, request, store_uri, images_root=images_root, split=split,
        cluster=ClusterConfig(scheduler_address, slurm_jobs, workers, threads, worker_wait=worker_wait,
                              slurm_replacements=slurm_replacements),
        options=ExtractOptions(batch_size, device, rows_per_shard, retry_failed, progress=not quiet, replace=replace,
                               wait=wait, decode_processes=decode_processes, rehash=rehash),
        reader=ReaderOptions(image_column, caption_column, separator), storage_options=storage_options,
        source_options=source_options,
    )
    click.echo(json.dumps(summary.to_json(), indent=2) if as_json else "\n".join(summary.lines()))


@cli.command()
@click.option("--store", "store_uri", required=True, help="Store path or fsspec URL.")
@storage_options_option
@click.option("--dataset", required=True, help="Dataset to train on.")
@click.option("--head", type=RegistryChoice(lambda: _heads(trainable=True)), required=True, help="Head to train.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: logs, checkpoints, reports (a path or fsspec URL).")
@click.option("--eval-dataset", "eval_datasets", multiple=True, help="Evaluate on this dataset too (repeatable).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help='JSON overriding the head\'s defaults: {"head": {...}, "train": {...}}.')
@space_option
@click.option("--split", default="train", show_default=True, help="Items of this split only ('' for all).")
@device_option
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Training seed (overrides the config's); repeat a run with several to measure its spread.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar and no periodic evaluation lines.")
@cache_options
def train(store_uri, storage_options, dataset, head, out, eval_datasets, config_path, space_key, split, device, seed,
          resume, quiet, cache_dir, cache_size) -> None:
    """Train an alignment head on cached tensors (no encoder runs)."""
    from cache_schemas.output import run_location
    from trainer.checkpoint import CheckpointError, has_checkpoint, load
    from trainer.health import health_of
    from trainer.train import train as run_train

    run = run_location(out, store_uri, storage_options)  # --out may be a URL
    try:
        reports = run_train(store_uri, dataset, head, out, space_key=space_key, split=split or None,
                            eval_datasets=eval_datasets, config_path=config_path, device=device, resume=resume,
                            seed=seed, progress=not quiet, storage_options=storage_options,
                            cache=_chunk_cache(cache_dir, cache_size))
    except KeyboardInterrupt:
        saved = None
        if has_checkpoint(run):
            try:
                saved = f"its checkpoint of step {load(run).state['step']}"
            except CheckpointError:
                saved = "its last checkpoint"
        raise _run_interrupted(out, saved, resume, seed is not None) from None
    click.echo(f"run in {out}: log.jsonl, checkpoints/" + (", eval/" if reports else ""))
    health = health_of(load(run).state)
    if health is not None and health.at_chance:
        click.echo(f"warning: {head} {health.sentence()}; its checkpoint and reports are marked", err=True)


@cli.command()
@click.option("--store", "store_uri", required=True, help="Store holding --dataset (its images are read again).")
@storage_options_option
@source_options_option
@click.option("--dataset", required=True, help="Dataset whose images and captions to fine-tune on.")
@click.option("--model", required=True, help="open_clip model name, e.g. ViT-B-32.")
@click.option("--pretrained", default=None, help="Weights to start from: a pretrained tag or local checkpoint; "
              "random init if omitted.")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), default=None,
              help="A local copy of a tokenizer open_clip would fetch from the Hugging Face hub.")
@click.option("--out", required=True, type=LocalFolder("extract --pretrained and --resume read its files locally"),
              help="Run folder: model.pt (what extract --pretrained takes), model.pt.json, state.pt.")
@click.option("--split", default="train", show_default=True, help="Items of this split only ('' for all).")
@click.option("--steps", type=int, default=FINETUNE_DEFAULTS.steps, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=int, default=FINETUNE_DEFAULTS.batch_size, show_default=True,
              help="Items (images with their captions) per step.")
@click.option("--lr", type=float, default=FINETUNE_DEFAULTS.lr, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--warmup-steps", type=int, default=FINETUNE_DEFAULTS.warmup_steps, show_default=True,
              help="Linear warm-up steps before the cosine decay.")
@click.option("--weight-decay", type=float, default=FINETUNE_DEFAULTS.weight_decay, show_default=True,
              help="AdamW weight decay.")
@click.option("--blocks", type=int, default=FINETUNE_DEFAULTS.blocks, show_default=True,
              help="Train only the last N blocks of each tower (and their final norm and projection); 0: all.")
@click.option("--hard-negatives", is_flag=True, help="NegCLIP-style: the dataset's negative captions and images "
              "as extra candidates.")
@click.option("--checkpoint-every", type=int, default=FINETUNE_DEFAULTS.checkpoint_every, show_default=True,
              help="Steps between saves of state.pt (what --resume continues from).")
@click.option("--seed", type=int, default=FINETUNE_DEFAULTS.seed, show_default=True,
              help="Seed of the item order and the initial weights where they are random.")
@device_option
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last state.pt.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def finetune(store_uri, storage_options, dataset, model, pretrained, tokenizer, out, split, steps, batch_size, lr,
             warmup_steps, weight_decay, blocks, hard_negatives, checkpoint_every, seed, device, resume, quiet,
             source_options) -> None:
    """Fine-tune an open_clip encoder end to end: the baseline local heads are compared with.

    Unlike train, this runs the encoder in its loop (reading the dataset's images again, a GPU
    where there is one). The weights it writes go to extract --pretrained, which stores them as
    a space of their own; eval then scores them with the global head like any other encoder."""
    from pipeline.encoders import EncoderRequest
    from pipeline.finetune.loop import STATE_FILE
    from pipeline.finetune.loop import finetune as run_finetune

    config = FinetuneConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                            weight_decay=weight_decay, blocks=blocks, hard_negatives=hard_negatives,
                            checkpoint_every=checkpoint_every, seed=seed)
    try:
        record = run_finetune(store_uri, dataset, EncoderRequest(model, pretrained, tokenizer=tokenizer), out,
                              config=config, split=split or None, device=device, resume=resume, progress=not quiet,
                              storage_options=storage_options, source_options=source_options)
    except KeyboardInterrupt:
        saved = os.path.exists(os.path.join(out, STATE_FILE))
        raise _run_interrupted(out, f"its {STATE_FILE}" if saved else None, resume) from None
    used = record["extract"]
    click.echo(f"fine-tuned {model} in {out}: loss {record['first_loss']:.3f} -> {record['last_loss']:.3f}; "
               f"extract it with --model {used['model']} --pretrained {used['pretrained']}")
    if record["health"]["status"] == "at chance":
        click.echo("warning: its training loss stayed at chance; it learned nothing a comparison could rest on",
                   err=True)


@cli.command("eval")
@click.option("--store", "store_uri", required=True, help="Store path or fsspec URL.")
@storage_options_option
@click.option("--dataset", required=True, help="Dataset to evaluate on.")
@click.option("--head", type=RegistryChoice(_heads), required=True,
              help="Head to score with (global and untrained maxsim need no --checkpoint).")
@click.option("--checkpoint", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder of a trained head (required for global-mlp and tflocal).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder (a path or fsspec URL).")
@space_option
@click.option("--split", default="", help="Items of this split only (default: all).")
@device_option
@click.option("--retrieval-k", type=click.IntRange(min=0), default=16, show_default=True,
              help="Global top K a pairwise head re-ranks (0: no retrieval).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@cache_options
def evaluate(store_uri, storage_options, dataset, head, run_dir, out, space_key, split, device, retrieval_k,
             quiet, cache_dir, cache_size) -> None:
    """Evaluate a head: accuracy, BiVLC-style scores, retrieval; writes report.json and report.md."""
    from trainer.evaluate import markdown
    from trainer.run import evaluate_head

    report = evaluate_head(store_uri, dataset, head, out, run_dir=run_dir, space_key=space_key,
                           split=split or None, device=device, retrieval_k=retrieval_k,
                           storage_options=storage_options, progress=not quiet,
                           cache=_chunk_cache(cache_dir, cache_size))
    click.echo(markdown(report))  # report.md's text


@cli.command()
@click.option("--store", "store_uri", required=True, help="Store holding the world's datasets.")
@storage_options_option
@click.option("--world", "world_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The generated world the datasets were extracted from (its JSONL hold the ground truth).")
@click.option("--prefix", default="world", show_default=True,
              help="Dataset names: PREFIX-train, PREFIX-test_id, PREFIX-test_ood (the demo's control: control).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Report folder: probe.json, probe.md (a path or fsspec URL).")
@space_option
def probe(store_uri, storage_options, world_dir, prefix, out, space_key) -> None:
    """Linear probes of the cached tokens: is the binding in them at all?

    From the patch token under an object, its colour and its shape; from a caption's object
    word, the colour bound to it. Each against chance and against the global embedding told
    which object is meant. Labels come from a generated world's ground truth (vlcache demo's)."""
    from cache_schemas.output import run_folder, staged
    from workflows.probe import run_probes, write_report

    folder = run_folder(out, store_uri, storage_options, write=True)
    results = run_probes(store_uri, world_dir, prefix, space_key, storage_options)
    with staged(folder) as local:
        click.echo(write_report(results, local), nl=False)


@cli.command()
@click.option("--store", "store_uri", required=True, help="Store path or fsspec URL.")
@storage_options_option
@click.option("--dataset", required=True, help="Dataset to score (its segments and boxes where it has them).")
@click.option("--regions", "sources", multiple=True, default=("values",), show_default=True,
              type=RegistryChoice(_region_sources),
              help="Region source (repeatable): pooled cached features, or crops the encoder sees one by one.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Report folder, one per source (a path or fsspec URL).")
@space_option
@click.option("--split", default="", help="Items of this split only (default: all).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@cache_options
def diagnose(store_uri, storage_options, dataset, sources, out, space_key, split, quiet, cache_dir, cache_size) -> None:
    """Structure-guided inference: caption segments matched to image regions."""
    from cache_schemas import open_store
    from cache_schemas.output import run_folder, staged
    from trainer.diagnostic import diagnose_with
    from trainer.evaluate import write_report

    folder = run_folder(out, store_uri, storage_options, write=True)
    store = open_store(store_uri, storage_options=storage_options, cache=_chunk_cache(cache_dir, cache_size))
    space, data = store.space_or_only(space_key), store.dataset(dataset)
    for source in sources:
        report = diagnose_with(space, data, source, split=split or None, progress=not quiet)
        with staged(folder.child(source)) as local:
            write_report(report, local)
        click.echo(f"{source}: accuracy {100 * report['caption_accuracy']['by_subset']['all']:.1f}% "
                   f"({report['encoder_passes_per_image']:.1f} encoder passes per image); "
                   f"report in {os.path.join(out, source)}")


@cli.command()
@click.argument("path")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the PNGs, a path or fsspec URL [default: RUN/plots/, or the report's folder].")
def plot(path, out) -> None:
    """PNG figures of a training run (loss per step against chance, periodic evaluations) or of an
    evaluation report (accuracy per subset against chance). PATH: a run folder or a report (folder)."""
    from cache_schemas.output import published, run_folder, staged
    from workflows.figures import default_out
    from workflows.figures import plot as run_plot

    folder = run_folder(out or default_out(path), write=True)
    with staged(folder) as local:  # all the PNGs or none (a full disk)
        written = run_plot(path, local)
    for file in written:
        click.echo(published(folder, local, file))


@cli.command()
@click.option("--store", "store_uri", required=True, help="Store path or fsspec URL.")
@storage_options_option
@click.option("--dataset", required=True, help="Dataset the items belong to.")
@click.option("--item", "items", multiple=True, required=True, help="Item id to draw (repeatable).")
@click.option("--checkpoint", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder of a trained maxsim or tflocal head.")
@click.option("--head", type=RegistryChoice(_heads), default=None,
              help="Without --checkpoint: an untrained head (maxsim, parameter-free).")
@click.option("--negatives", is_flag=True, help="Draw the item's negative captions too.")
@click.option("--segments", is_flag=True, help="A panel per caption segment (its tokens' mean), where the dataset "
              "names segments.")
@click.option("--per-panel", is_flag=True, help="Stretch each panel's colours to its own range (where each token "
              "points, not how strongly); default: one scale for the figure.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the PNGs, a path or fsspec URL [default: RUN/alignment/, or alignment-HEAD/].")
@space_option
@device_option
def align(store_uri, storage_options, dataset, items, run_dir, head, negatives, segments, per_panel, out, space_key,
          device) -> None:
    """Draw how each caption token aligns with the item's image patches (maxsim, tflocal): one PNG per item."""
    from cache_schemas.output import published, run_folder, staged
    from workflows.alignment import align as run_align

    if not run_dir and not head:
        raise click.UsageError("pass --checkpoint RUN_DIR, or --head maxsim for the untrained head")
    if segments:
        _require_segments(store_uri, storage_options, dataset)
    out = out or (os.path.join(run_dir, "alignment") if run_dir else f"alignment-{head}")
    folder = run_folder(out, store_uri, storage_options, write=True)
    with staged(folder) as local:
        drawings = list(run_align(store_uri, dataset, list(items), local, head_name=head, run_dir=run_dir,
                                  space_key=space_key, negatives=negatives, segments=segments, per_panel=per_panel,
                                  device=device, storage_options=storage_options))
    for drawn in drawings:
        panels = ", ".join(f"{role} {len(labels)}" for role, labels in drawn.panels.items())
        click.echo(f"{published(folder, local, drawn.path)}\t(panels: {panels}; labels: {drawn.labels_from})")


def _require_segments(store_uri: str, storage_options: dict | None, dataset: str) -> None:
    """--segments on a dataset that names no caption segments is refused, not drawn as token panels."""
    import pyarrow.compute as pc

    from cache_schemas import open_store

    segments = open_store(store_uri, storage_options=storage_options).dataset(dataset).column("texts", "segments")
    if not pc.max(pc.list_value_length(segments)).as_py():
        raise VlcacheError(f"--segments: dataset {dataset} names no caption segments (its source gave none); "
                           "leave --segments out to draw a panel per token")


@cli.command()
@click.option("--out", type=LocalFolder("the demo builds its stores and runs in it"), default="runs/demo",
              show_default=True,
              help="Folder for the demo's stores, runs and report.")
@click.option("--sweep", is_flag=True, help="Repeat the study over scene complexity (each point about half the demo).")
@click.option("--small", is_flag=True, help="A two-minute run at toy size (a smoke test).")
@click.option("--world-encoder", type=RegistryChoice(_world_encoders), default="bag-of-words",
              show_default=True, help="bag-of-words: pretrained on web-style alt-text, at chance on attribute swaps "
              "by global cosine, as CLIP is; binding: pretrained on full captions, its global cosine binds, weakly.")
@click.option("--seed", type=int, default=0, show_default=True, help="The world's seed.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def demo(out: str, sweep: bool, small: bool, world_encoder: str, seed: int, quiet: bool) -> None:
    """The end-to-end demo: positive control, world, encoder, cache, probes, heads, fine-tuning baselines,
    report."""
    import dataclasses

    from workflows.demo import DemoConfig, run_demo, run_sweep

    config = DemoConfig.for_world_encoder(world_encoder)
    config = dataclasses.replace(config, world=dataclasses.replace(config.world, seed=seed))
    config = config.small() if small else config
    try:
        if sweep:
            run_sweep(out, config.for_sweep(), progress=not quiet)
            click.echo(f"sweep report: {os.path.join(out, 'sweep.md')}")
        else:
            run_demo(out, config, progress=not quiet)
            click.echo(f"report: {os.path.join(out, 'report.md')}")
    except KeyboardInterrupt:
        raise Interrupted("the demo does not resume; the same command starts it again, reusing the world encoder "
                          f"already pretrained in {out}") from None


@cli.command()
@click.option("--coco", required=True, type=click.Path(exists=True, file_okay=False),
              help="COCO 2017 root (train2017/, val2017/).")
@click.option("--sugarcrepe", required=True, type=click.Path(exists=True, file_okay=False),
              help="SugarCrepe's folder of JSON files.")
@click.option("--bivlc", required=True, type=click.Path(exists=True), help="BiVLC (Parquet with images inside).")
@click.option("--trohn", required=True, type=click.Path(exists=True, dir_okay=False), help="TROHN-Text JSON.")
@click.option("--model", required=True, help="open_clip model, e.g. ViT-B-32.")
@click.option("--pretrained", default=None, help="Pretrained tag or local checkpoint (random init if omitted).")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), default=None,
              help="Local tokenizer folder, for models whose tokenizer lives on the Hugging Face hub.")
@click.option("--out", required=True, type=LocalFolder("reproduce builds its store and runs in it"),
              help="Folder for the store, runs, reports and reproduce.md.")
@click.option("--seeds", default="0", show_default=True, help="Training seeds, comma-separated.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSON {"train": {...}, "finetune": {...}} overriding every head\'s training defaults and the '
                   'fine-tuning settings (steps, lr, ...; those of vlcache finetune).')
@click.option("--no-finetune", is_flag=True, help="Skip the fine-tuning baselines (they run the encoder).")
@device_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def reproduce(coco, sugarcrepe, bivlc, trohn, model, pretrained, tokenizer, out, seeds, config_path, no_finetune,
              device, quiet) -> None:
    """The paper's table: extract COCO/SugarCrepe/BiVLC/TROHN-Text once, train heads, fine-tune the
    encoder (plain and with hard negatives), evaluate, compare."""
    from pipeline.encoders import EncoderRequest
    from workflows.reproduce import ReproduceConfig, Sources
    from workflows.reproduce import reproduce as run_reproduce

    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    from trainer.config import TrainConfig, read_config

    user = read_config(config_path) if config_path else {}
    overrides = user.get("train", {})
    TrainConfig.from_json(overrides)  # refused here, in one line, before any extraction
    tuning = None if no_finetune else FinetuneConfig.from_json(user.get("finetune", {}))
    try:
        run_reproduce(out, Sources(coco, sugarcrepe, bivlc, trohn),
                      EncoderRequest(model, pretrained, tokenizer=tokenizer),
                      ReproduceConfig(seeds=seed_list, train=overrides, finetune=tuning, device=device),
                      progress=not quiet)
    except KeyboardInterrupt:
        raise Interrupted(f"reproduce does not resume its runs; {os.path.join(out, 'store')} keeps what was "
                          f"extracted (a rerun reuses it): remove {os.path.join(out, 'runs')} or choose another --out, "
                          "then run it again") from None
    click.echo(f"table: {os.path.join(out, 'reproduce.md')}")


@cli.group()
def cache() -> None:
    """Inspect, check, export and import stores."""


@cache.command("ls")
@click.argument("uri")
@storage_options_option
def cache_ls(uri: str, storage_options: dict | None) -> None:
    """List a store's datasets and spaces, or the stores in a folder."""
    from cache_schemas import StoreNotFoundError, open_store

    try:
        store = open_store(uri, storage_options=storage_options)
    except StoreNotFoundError:
        stores = [d for d in sorted(os.listdir(uri)) if os.path.isfile(os.path.join(uri, d, "vlcache.json"))] \
            if os.path.isdir(uri) else []
        if not stores:
            raise
        click.echo("\n".join(f"store {os.path.join(uri, d)}" for d in stores))
        return
    for name in store.dataset_names():
        click.echo(f"dataset {name}\t{store.dataset(name).manifest['counts']['items']} items")
    for key in store.space_keys():
        click.echo(f"space {key}\t{store.space(key).spec.describe()}")


@cache.command("info")
@click.argument("uri")
@storage_options_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--disk", is_flag=True, help="Also bytes on disk (lists every chunk file: slow on a long history).")
def cache_info(uri: str, storage_options: dict | None, as_json: bool, disk: bool) -> None:
    """Datasets, spaces, counts of unique images, texts and items, and bytes."""
    from cache_schemas import open_store
    from cache_schemas.info import describe_store

    info = describe_store(open_store(uri, storage_options=storage_options), disk_bytes=disk)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    unique = info["unique"]
    click.echo(f"store {info['store']} (schema {info['schema_version']}): {unique['items']} items, "
               f"{unique['images']} unique images, {unique['texts']} unique texts")
    for name, d in info["datasets"].items():
        click.echo(f"  dataset {name}: {d['items']} items, {d['images']} images, {d['texts']} texts, "
                   f"{d['read_errors']} unreadable; subsets {', '.join(d['subsets'])}")
    for key, s in info["spaces"].items():
        click.echo(f"  space {key}: {s['description']}")
        size = f"{_mb(s['bytes']['committed']['total'])} uncompressed" + (
            f", {_mb(s['bytes']['on_disk']['total'])} on disk" if "on_disk" in s["bytes"] else "")
        click.echo(f"    {s['images']} images, {s['texts']} texts, {s['failed']} failed, "
                   f"{size}; pending shards {s['pending_shards']}")
        if any(s["unreferenced"].values()):
            click.echo(f"    unreferenced by any dataset: {s['unreferenced']['images']} images, "
                       f"{s['unreferenced']['texts']} texts (see vlcache cache gc)")
        for name, c in s["datasets"].items():
            click.echo(f"    {name}: {c['images']}/{info['datasets'][name]['images']} images, "
                       f"{c['texts']}/{info['datasets'][name]['texts']} texts encoded")


@cache.command("rm")
@click.argument("uri")
@storage_options_option
@click.argument("dataset")
def cache_rm(uri: str, storage_options: dict | None, dataset: str) -> None:
    """Remove DATASET from the store; embeddings other datasets share are kept."""
    from cache_schemas import open_store

    open_store(uri, mode="r+", storage_options=storage_options).remove_dataset(dataset)
    click.echo(f"removed dataset {dataset}")


@cache.command("gc")
@click.argument("uri")
@storage_options_option
@click.option("--collect", is_flag=True, help="Delete the shards no dataset needs (otherwise: only report them).")
def cache_gc(uri: str, storage_options: dict | None, collect: bool) -> None:
    """Rows no dataset refers to: report them, and with --collect free every shard holding only those."""
    from cache_schemas import open_store
    from cache_schemas.gc import collect as collect_space
    from cache_schemas.gc import find_garbage, referenced

    store = open_store(uri, mode="r+" if collect else "r", storage_options=storage_options)
    needed = referenced(store)
    for key in store.space_keys():
        if collect:
            garbage, freed = collect_space(store, key)
        else:
            garbage, freed = find_garbage(store.space(key), needed), None
        shards = sum(len(s) for s in garbage.shards.values())
        done = f"; collected them, {_mb(freed)} freed" if collect else (" (--collect frees them)" if shards else "")
        click.echo(f"space {key}: {garbage.unreferenced['images']} images and {garbage.unreferenced['texts']} texts "
                   f"unreferenced; {shards} shards hold nothing else{done}")


@cache.command("compact")
@click.argument("uri")
@storage_options_option
def cache_compact(uri: str, storage_options: dict | None) -> None:
    """Index every space's committed rows in one file per kind (extract does this as it finishes)."""
    from cache_schemas import open_store

    store = open_store(uri, mode="r+", storage_options=storage_options)
    for key in store.space_keys():
        space = store.space(key)
        with store.space_writer(space.spec, space.geometry, "vlcache cache compact") as writable:
            writable.compact()
        click.echo(f"compacted space {key}")


@cache.command("verify")
@click.argument("uri")
@storage_options_option
def cache_verify(uri: str, storage_options: dict | None) -> None:
    """Check every metadata file, and every committed shard against its checksums; exit 1 on any problem."""
    from cache_schemas.verify import verify_at

    report = verify_at(uri, storage_options=storage_options)
    checked = ", ".join(f"{n} {what}" for what, n in sorted(report.checked.items()))
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo(f"{'ok' if report.ok else f'{len(report.problems)} problems'}: checked {checked or 'nothing'}")
    if report.damaged:
        click.echo(f"{len(report.damaged)} metadata files damaged: vlcache cache repair {uri} rebuilds what can be "
                   "rebuilt and says what cannot", err=True)
    if not report.ok:
        sys.exit(1)


@cache.command("repair")
@click.argument("uri", metavar="STORE")
@storage_options_option
@click.option("--wait", type=click.FloatRange(min=0), default=3600, show_default=True,
              help="Seconds to wait while an extraction writes a space, then give up.")
def cache_repair(uri: str, storage_options: dict | None, wait: float) -> None:
    """Rebuild damaged metadata from what the store still holds (index, commit records, plans, manifests,
    space.json), holding each writer's lease; say what cannot be rebuilt, and exit 1 if anything cannot."""
    from cache_schemas.repair import repair

    report = repair(uri, storage_options=storage_options, wait=wait)
    for line in report.repaired:
        click.echo(f"repaired: {line}")
    for line in report.cannot:
        click.echo(f"cannot repair: {line}", err=True)
    if report.cannot:
        sys.exit(1)
    click.echo(f"repaired {len(report.repaired)} files; vlcache cache verify {uri} checks the rest" if report.repaired
               else "nothing to repair")


@cache.command("export")
@click.argument("uri", metavar="STORE")
@storage_options_option
@click.argument("out")
@click.option("--dataset", required=True, help="The dataset to export.")
@click.option("--space", "space_key", default=None, help="Space key or model name (default: the store's only space).")
@click.option("--format", "fmt", type=click.Choice(["hdf5", "clip-retrieval"]), default="hdf5", show_default=True,
              help="hdf5: one file, everything `cache import` needs; clip-retrieval: a folder of two collections "
                   "(unique images, unique captions) of .npy and Parquet partitions, as `clip inference` writes them.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (only once the new export is complete).")
def cache_export(uri: str, storage_options: dict | None, out: str, dataset: str, space_key: str | None,
                 fmt: str, force: bool) -> None:
    """Write DATASET with its embeddings in one space to OUT (an .h5 file, or a clip-retrieval folder)."""
    from cache_schemas import open_store
    from cache_schemas.exchange import export_clip_retrieval, export_hdf5

    write = export_hdf5 if fmt == "hdf5" else export_clip_retrieval
    summary = write(open_store(uri, storage_options=storage_options), dataset, space_key, out, force=force)
    click.echo("\n".join(summary.lines()))


@cache.command("import")
@click.argument("path", metavar="FILE")
@click.option("--store", "store_uri", required=True, help="Store to import into (created if needed).")
@storage_options_option
@click.option("--dataset", default=None, help="Register the dataset under this name (default: its name in the file).")
@click.option("--replace", is_flag=True, help="Replace a dataset of that name with other content.")
def cache_import(path: str, store_uri: str, storage_options: dict | None, dataset: str | None, replace: bool) -> None:
    """Register the dataset of FILE (an HDF5 export) and write the embeddings its space lacks (no encoder runs)."""
    from pipeline.importer import import_hdf5

    summary = import_hdf5(path, store_uri, dataset, replace=replace, storage_options=storage_options,
                           on_wait=lambda m: click.echo(m, err=True))
    click.echo("\n".join(summary.lines()))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _enable_faulthandler() -> None:
    """A crash in native code (CUDA, a codec) still prints where each thread was."""
    try:
        faulthandler.enable()
    except (OSError, ValueError):  # stderr without a file descriptor (captured, as in tests)
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns user errors into one line and an exit status."""
    _enable_faulthandler()
    try:
        cli.main(args=argv, prog_name="vlcache", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `vlcache`: show the help, as click would
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.exceptions.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "vlcache"
        click.echo(f"error: {exc.format_message()} (see {command} --help)", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        how = exc if isinstance(exc, Interrupted) else exc.__cause__  # click wraps Ctrl-C in an Abort
        click.echo(f"interrupted: {how}" if isinstance(how, Interrupted) else
                   "interrupted: committed shards are kept; rerun the same command to resume", err=True)
        return 130
    except VlcacheError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # a full disk met by a writer with no handler of its own: one line all the same
        if not is_disk_full(exc):
            raise
        click.echo(f"error: {disk_full(getattr(exc, 'filename', None) or 'its output')}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
