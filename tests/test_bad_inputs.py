"""Every `vlcache` command given bad input ends in exactly one line on stderr and a non-zero exit, and writes
nothing: no new or changed file, no new folder, no new store. One table, by category (docs/RELIABILITY.md
counts them), run in-process against one small real store, run, report and export built once; the few cases
an in-process run cannot reproduce faithfully (dask's config read from a file, the installed entry point) run
as subprocesses."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import traceback
from collections import Counter
from pathlib import Path

import h5py
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from trainer.train import train
from workflows.cli import main
from workflows.examples import write_sugarcrepe_example

from .conftest import run_extract

EXTRACT = "extract sc/annotations --format sugarcrepe --images-root sc/images --model vlcache-tiny --quiet"
STORE = "--store store --dataset sc"
EXPORT_TO = "cache export store --dataset sc"
TINY_RUN = {"head": {"dim": 16}, "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2,
                                           "log_every": 1, "eval_every": 100, "retrieval_k": 0}}
START = {"event": "start", "head": "maxsim"}


def _lines(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# -- the bad inputs: (command line, exit code, a fragment of the one line), by category --------------------------
# Paths are relative to the fixture folder the cases run in: store (a real store), run (a trained maxsim run),
# report (an eval report), export.h5 (an HDF5 export), sc/ (the SugarCrepe source), bad/ (the files below).

MISSING = [
    (f"{EXTRACT.replace('sc/annotations', 'no/such/folder')} --dataset x --store new", 2, "does not exist"),
    (f"{EXTRACT} --dataset x --store new --tokenizer no/such/dir --model ViT-B-16-SigLIP", 2, "does not exist"),
    (f"{EXTRACT.replace('sc/images', 'no/such/images')} --dataset x --store new", 2, "none of the"),
    (f"{EXTRACT} --dataset x --store new --source-options @no/such.json", 2, "cannot read 'no/such.json'"),
    (f"{EXTRACT} --dataset x --store new --storage-options @no/such.json", 2, "cannot read 'no/such.json'"),
    ("train --store nostore --dataset sc --head maxsim --out out", 2, "no vlcache store at nostore"),
    (f"train {STORE} --head maxsim --out out --config no/such.json", 2, "no/such.json"),
    ("eval --store nostore --dataset sc --head global --out out", 2, "no vlcache store at nostore"),
    (f"eval {STORE} --head maxsim --checkpoint no/such/run --out out", 2, "no/such/run"),
    ("diagnose --store nostore --dataset sc --out out", 2, "no vlcache store at nostore"),
    ("probe --store nostore --world bad --out out", 2, "no vlcache store at nostore"),
    ("probe --store store --world no/such/world --out out", 2, "does not exist"),
    ("plot no/such/run", 2, "no/such/run does not exist"),
    ("plot bad/empty", 2, "is neither a training run"),
    ("align --store nostore --dataset sc --item swap_att/0 --head maxsim --out out", 2, "no vlcache store at nostore"),
    (f"align {STORE} --item swap_att/0 --checkpoint no/such/run --out out", 2, "no/such/run"),
    ("finetune --store nostore --dataset sc --model vlcache-tiny --out out", 2, "no vlcache store at nostore"),
    ("reproduce --coco no/coco --sugarcrepe sc/annotations --bivlc bad/text.txt --trohn bad/text.txt --model "
     "vlcache-tiny --out out", 2, "'--coco': Directory 'no/coco' does not exist"),
    ("reproduce --coco sc --sugarcrepe no/sc --bivlc bad/text.txt --trohn bad/text.txt --model vlcache-tiny --out out",
     2, "'--sugarcrepe': Directory 'no/sc' does not exist"),
    ("reproduce --coco sc --sugarcrepe sc/annotations --bivlc no/b.parquet --trohn bad/text.txt --model vlcache-tiny "
     "--out out", 2, "'--bivlc': Path 'no/b.parquet' does not exist"),
    ("reproduce --coco sc --sugarcrepe sc/annotations --bivlc bad/text.txt --trohn no/t.json --model vlcache-tiny "
     "--out out", 2, "'--trohn': File 'no/t.json' does not exist"),
    ("reproduce --coco sc --sugarcrepe sc/annotations --bivlc bad/text.txt --trohn bad/text.txt --model vlcache-tiny "
     "--out out --config no/c.json", 2, "'--config': File 'no/c.json' does not exist"),
    ("cache ls nostore", 2, "no vlcache store at nostore"),
    ("cache info nostore", 2, "no vlcache store at nostore"),
    ("cache verify nostore", 2, "no vlcache store at nostore"),
    ("cache rm nostore sc", 2, "no vlcache store at nostore"),
    ("cache gc nostore", 2, "no vlcache store at nostore"),
    ("cache gc nostore --collect", 2, "no vlcache store at nostore"),
    ("cache compact nostore", 2, "no vlcache store at nostore"),
    ("cache export nostore --dataset sc out.h5", 2, "no vlcache store at nostore"),
    ("cache import no/such.h5 --store new", 2, "no such file: no/such.h5"),
    ("cache info store --storage-options @no/such.json", 2, "cannot read 'no/such.json'"),
    ("cache info memory://vlcache-nothing-here", 2, "no vlcache store at memory://vlcache-nothing-here"),
]

WRONG_FORMAT = [
    ("extract bad/coco_ok.json --format coco --dataset x --model vlcache-tiny --store new --quiet", 2,
     "none of the 1 images could be read"),  # a COCO file away from its images
    ("extract sc/annotations --format coco --dataset x --model vlcache-tiny --store new", 2, "is not a file"),
    ("extract bad/list.json --format sugarcrepe --dataset x --model vlcache-tiny --store new", 2, "sugarcrepe"),
    ("extract bad/text.txt --format parquet --dataset x --model vlcache-tiny --store new", 2, "text.txt"),
    ("extract bad/binary.bin --format csv --dataset x --model vlcache-tiny --store new", 2, "binary.bin"),
    ("extract bad/binary.bin --format jsonl --dataset x --model vlcache-tiny --store new", 2, "binary.bin"),
    ("extract bad/binary.bin --format tsv --dataset x --model vlcache-tiny --store new", 2, "binary.bin"),
    ("extract bad/text.txt --format webdataset --dataset x --model vlcache-tiny --store new", 2, "text.txt"),
    ("extract bad/text.txt --format folder --dataset x --model vlcache-tiny --store new", 2, "is not a folder"),
    ("extract bad --format trohn --dataset x --model vlcache-tiny --store new", 2, "is not a file"),
    ("extract bad/binary.bin --format coco --dataset x --model vlcache-tiny --store new", 2,
     "is not a COCO captions file"),
    ("extract bad/binary.bin --format trohn --dataset x --model vlcache-tiny --store new", 2,
     "neither a JSON list nor JSON Lines"),
    ("extract bad/text.txt --format bivlc --dataset x --model vlcache-tiny --store new", 2, "text.txt"),
    ("extract bad/empty --format folder --dataset x --model vlcache-tiny --store new", 2, "no images"),
    ("cache import bad/text.txt --store new", 2, "cannot be read as HDF5"),
    ("cache import bad/table.parquet --store new", 2, "cannot be read as HDF5"),
    ("cache import bad/plain.h5 --store new", 2, "is not a vlcache export"),
    ("cache import bad --store new", 2, "no such file: bad"),
    ("plot bad/binary.bin", 2, "is neither a training run"),
    ("plot bad/binary.jsonl", 2, "cannot be read as a training log"),
    ("plot bad/binary.json", 2, "cannot be read as a report"),
    ("plot bad/list.json", 2, "is not an evaluation report"),
    ("plot store", 2, "is neither a training run"),
    (f"train {STORE} --head maxsim --out out --config bad/binary.bin", 2, "is not UTF-8 text"),
    (f"train {STORE} --head maxsim --out out --config bad/text.txt", 2, "is not valid JSON"),
    (f"eval {STORE} --head maxsim --checkpoint report --out out", 2, "report"),
    (f"align {STORE} --item swap_att/0 --checkpoint store --out out", 2, "store"),
    ("cache info bad/text.txt", 2, "no vlcache store at bad/text.txt"),
    ("cache ls bad/text.txt", 2, "no vlcache store at bad/text.txt"),
    ("cache info store --storage-options @bad/binary.bin", 2, "cannot read 'bad/binary.bin'"),
]

MALFORMED = [
    *[(f"extract bad/{name} --format coco --dataset x --model vlcache-tiny --store new", 2, fragment)
      for name, fragment in [
        ("coco_image_strings.json", "images[0] is str, not an object"),
        ("coco_images_object.json", "it needs 'images', a list of objects"),
        ("coco_no_annotations.json", "it needs 'annotations', a list of objects"),
        ("coco_annotation_list.json", "annotations[0] is list, not an object"),
        ("coco_unknown_image.json", "image_id 7 names no image"),
        ("coco_image_id_list.json", "image_id [1] names no image"),
        ("coco_empty_caption.json", "the caption must be a non-empty text"),
        ("coco_number_caption.json", "the caption must be a non-empty text, got 5"),
        ("coco_truncated.json", "is not a COCO captions file (JSONDecodeError"),
        ("coco_top_list.json", "it needs 'images', a list of objects"),
        ("coco_no_items.json", "holds no items as coco"),
    ]],
    *[(f"extract bad/{name} --format trohn --images-root sc/images --dataset x --model vlcache-tiny --store new "
       "--quiet", 2,
       fragment) for name, fragment in [
        ("trohn_superscript.json", "none of the 1 images could be read"),
        ("trohn_image_id_list.json", "image_id must be a COCO image id"),
        ("trohn_image_id_bool.json", "image_id must be a COCO image id"),
        ("trohn_image_id_negative.json", "image_id must be a COCO image id"),
        ("trohn_image_id_blank.json", "image_id must be a COCO image id"),
        ("trohn_entry_string.json", "expected an object with image_id"),
        ("trohn_no_caption.json", "the caption must be a non-empty text"),
        ("trohn_no_negative.json", "the caption must be a non-empty text, got None"),
        ("trohn_object.json", "must hold a JSON list of entries"),
        ("trohn_truncated.json", "neither a JSON list nor JSON Lines"),
        ("trohn_empty.json", "holds no items as trohn"),
        ("trohn_negative_image_number.json", "negative_image must be a path"),
    ]],
    *[(f"extract bad/{name} --format sugarcrepe --images-root sc/images --dataset x --model vlcache-tiny "
       "--store new", 2, fragment) for name, fragment in [
        ("sc_list", "must be an object of entries"),
        ("sc_no_caption", "the caption must be a non-empty text"),
        ("sc_empty_entries", "holds no items as sugarcrepe"),
        ("empty", "no .json files in bad/empty"),
        ("sc_truncated", "sc_truncated"),
    ]],
    *[(f"extract bad/{name} --format {fmt} --dataset x --model vlcache-tiny --store new", 2, fragment)
      for name, fmt, fragment in [
        ("not_json.jsonl", "jsonl", "cannot read"),
        ("no_caption.jsonl", "jsonl", "lacks column(s) ['caption']"),
        ("string_boxes.jsonl", "jsonl", "boxes must be a list of [x0, y0, x1, y1] numbers"),
        ("empty.jsonl", "jsonl", "empty.jsonl"),
        ("no_caption.csv", "csv", "lacks column(s) ['caption']"),
        ("header_only.csv", "csv", "header_only.csv"),
        ("truncated.parquet", "parquet", "truncated.parquet"),
        ("no_caption.parquet", "parquet", "lacks column(s) ['caption']"),
        ("zero_rows.parquet", "parquet", "zero_rows.parquet"),
        ("numbers.csv", "csv", "the caption must be a non-empty text"),
        ("bivlc_no_negatives.jsonl", "bivlc", "lacks column(s)"),
        ("truncated.tar", "webdataset", "truncated.tar"),
    ]],
    ("cache import bad/flipped.h5 --store new", 2, "cannot be read"),
    ("cache import bad/truncated.h5 --store new", 2, "cannot be read as HDF5"),
    ("cache import bad/no_tables.h5 --store new", 2, "does not follow the vlcache export layout"),
    ("cache import bad/future.h5 --store new", 2, "has export version 99"),
    ("cache import bad/bad_spec.h5 --store new", 2, "bad_spec.h5"),
    ("plot bad/report_wrong_shape.json", 2, "caption_accuracy needs by_subset"),
    ("plot bad/report_string_accuracy.json", 2, "caption_accuracy needs by_subset"),
    ("plot bad/report_no_panels.json", 2, "it has neither caption_accuracy nor bivlc"),
    ("plot bad/report_bad_bivlc.json", 2, "bivlc.group needs by_type"),
    ("plot bad/report_bad_chance.json", 2, "chance_by_subset needs a number for every subset"),
    ("plot bad/report_head_number.json", 2, "head is int, not a text"),
    ("plot bad/log_string_loss", 2, "has a loss of 'high', not a number"),
    ("plot bad/log_not_object", 2, "record 2 is list, not an object"),
    ("plot bad/log_no_start", 2, "no start record"),
    ("plot bad/log_no_steps", 2, "has no training step logged yet"),
    ("plot bad/log_string_step", 2, "has no step (a whole number)"),
    ("plot bad/log_bad_eval", 2, "has an eval that is not"),
    ("plot bad/log_not_json", 2, "line 2 is not JSON"),
    (f"train {STORE} --head maxsim --out out --config bad/config_unknown.json", 2, "bogus"),
    (f"train {STORE} --head maxsim --out out --config bad/config_wrong_type.json", 2, "steps"),
    (f"train {STORE} --head maxsim --out out --config bad/list.json", 2, "list.json"),
]

OUT_OF_RANGE = [
    *[(f"{EXTRACT} --dataset x --store new {option}", 2, fragment) for option, fragment in [
        ("--workers 0", "'--workers': 0 is not in the range x>=1"),
        ("--threads 0", "'--threads': 0 is not in the range x>=1"),
        ("--batch-size 0", "'--batch-size': 0 is not in the range x>=1"),
        ("--rows-per-shard 0", "'--rows-per-shard': 0 is not in the range x>=1"),
        ("--slurm-jobs -1", "'--slurm-jobs': -1 is not in the range x>=0"),
        ("--slurm-replacements -1", "'--slurm-replacements': -1 is not in the range x>=0"),
        ("--worker-wait -1", "'--worker-wait': -1.0 is not in the range x>=0"),
        ("--wait -5", "'--wait': -5.0 is not in the range x>=0"),
        ("--decode-processes -1", "'--decode-processes': -1 is not in the range x>=0"),
        ("--device tpu", "'tpu' is not a device"),
        ("--device cuda:x", "'cuda:x' is not a device"),
        ("--dtype float64", "'float64' is not one of 'float16', 'float32'"),
        ("--layer 99", "--layer 99"),
        ("--layer abc", "'abc' is not a valid integer"),
        ("--workers two", "'two' is not a valid integer"),
        ("--tokens bogus", "bogus"),
    ]],
    (f"train {STORE} --head maxsim --out out --seed -1", 2, "'--seed': -1 is not in the range x>=0"),
    (f"train {STORE} --head maxsim --out out --device gpu", 2, "'gpu' is not a device"),
    (f"train {STORE} --head maxsim --out out --cache-size lots", 2, "--cache-size"),
    (f"train {STORE} --head maxsim --out out --config bad/config_zero_steps.json", 2, "steps must be >= 1, got 0"),
    (f"train {STORE} --head maxsim --out out --config bad/config_zero_batch.json", 2, "batch_size must be >= 2, got 0"),
    (f"train {STORE} --head maxsim --out out --config bad/config_zero_width.json", 2, "dim"),
    (f"eval {STORE} --head global --out out --retrieval-k -1", 2, "'--retrieval-k': -1 is not in the range x>=0"),
    (f"eval {STORE} --head global --out out --device mps:0", 2, "'mps:0' is not a device"),
    (f"eval {STORE} --head global --out out --cache-size 12parsecs", 2, "--cache-size"),
    (f"diagnose {STORE} --out out --cache-size -1GB", 2, "--cache-size"),
    *[(f"finetune {STORE} --model vlcache-tiny --out out {option}", 2, fragment) for option, fragment in [
        ("--steps 0", "steps"),
        ("--batch-size 0", "batch_size"),
        ("--lr -1", "lr"),
        ("--blocks -1", "blocks"),
        ("--checkpoint-every 0", "checkpoint_every"),
        ("--warmup-steps -1", "warmup_steps"),
        ("--device tpu", "'tpu' is not a device"),
        ("--steps many", "'many' is not a valid integer"),
    ]],
    ("reproduce --coco sc --sugarcrepe sc/annotations --bivlc bad/text.txt --trohn bad/text.txt --model vlcache-tiny "
     "--out out --seeds a,b", 2, "expected comma-separated integers"),
    ("reproduce --coco sc --sugarcrepe sc/annotations --bivlc bad/text.txt --trohn bad/text.txt --model vlcache-tiny "
     "--out out --device tpu", 2, "'tpu' is not a device"),
    ("demo --out out --seed x", 2, "'x' is not a valid integer"),
]

UNKNOWN_NAMES = [
    (f"{EXTRACT} --dataset x --store new --format sugarcreep", 2, "'sugarcreep' is not one of"),
    (f"{EXTRACT} --dataset x --store new --model ViT-B-99", 2, "unknown model 'ViT-B-99'"),
    (f"{EXTRACT} --dataset x --store new --model ViT-B-32 --pretrained nope", 2, "is neither a file nor a tag"),
    (f"{EXTRACT} --dataset x --store new --encoder no_such_module:Enc", 2, "cannot import no_such_module"),
    (f"{EXTRACT} --dataset x --store new --encoder json:NoSuchClass", 2, "module json has no NoSuchClass"),
    (f"{EXTRACT} --dataset x --store new --encoder json:JSONDecoder", 2, "is not a subclass"),
    (f"{EXTRACT} --dataset x --store new --encoder pipeline.encoders:Encoder", 2, "is abstract"),
    (f"{EXTRACT} --dataset x --store new --encoder nocolon", 2, "must be 'open_clip' or 'module:Class'"),
    (f"{EXTRACT} --dataset x --store new --encoder .relative:Enc", 2, "cannot import .relative"),
    (f"{EXTRACT} --dataset 'bad name!' --store new", 2, "dataset name 'bad name!' must be"),
    (f"{EXTRACT} --dataset x --store new --bogus", 2, "No such option '--bogus'"),
    ("train --store store --dataset nope --head maxsim --out out", 2, "no dataset 'nope'"),
    (f"train {STORE} --head nohead --out out", 2, "'nohead' is not one of"),
    (f"train {STORE} --head global --out out", 2, "'global' is not one of"),
    (f"train {STORE} --head maxsim --out out --space nospace", 2, "nospace"),
    (f"train {STORE} --head maxsim --out out --split '' --eval-dataset nope", 2, "no dataset 'nope'"),
    ("eval --store store --dataset nope --head global --out out", 2, "no dataset 'nope'"),
    (f"eval {STORE} --head nohead --out out", 2, "'nohead' is not one of"),
    (f"eval {STORE} --head global --out out --space nospace", 2, "nospace"),
    (f"eval {STORE} --head tflocal --out out", 2, "tflocal"),
    ("diagnose --store store --dataset nope --out out", 2, "no dataset 'nope'"),
    (f"diagnose {STORE} --out out --regions nowhere", 2, "'nowhere' is not one of"),
    (f"diagnose {STORE} --out out --space nospace", 2, "nospace"),
    ("probe --store store --world bad/world --prefix nope --out out", 2, "no dataset 'nope-train'"),
    (f"align {STORE} --item nope/0 --head maxsim --out out", 2, "nope/0"),
    ("align --store store --dataset nope --item swap_att/0 --head maxsim --out out", 2, "no dataset 'nope'"),
    (f"align {STORE} --item swap_att/0 --head nohead --out out", 2, "'nohead' is not one of"),
    (f"align {STORE} --item swap_att/0 --head global --out out", 2, "global"),
    ("finetune --store store --dataset nope --model vlcache-tiny --out out", 2, "no dataset 'nope'"),
    (f"finetune {STORE} --model ViT-B-99 --out out --split ''", 2, "unknown model 'ViT-B-99'"),
    ("demo --out out --world-encoder nope", 2, "'nope' is not one of"),
    ("cache rm store nope", 2, "no dataset 'nope'"),
    ("cache export store --dataset nope out.h5", 2, "no dataset 'nope'"),
    (f"{EXPORT_TO} --space nospace out.h5", 2, "nospace"),
    (f"{EXPORT_TO} --format zip out.zip", 2, "'zip' is not one of 'hdf5', 'clip-retrieval'"),
    ("cache import export.h5 --store new --dataset 'bad name'", 2, "dataset name 'bad name' must be"),
    ("nosuchcommand", 2, "No such command 'nosuchcommand'"),
    ("cache nosuch", 2, "No such command 'nosuch'"),
    ("cache info store --bogus", 2, "No such option '--bogus'"),
]

CONFLICTS = [
    (f"align {STORE} --item swap_att/0 --out out", 2, "pass --checkpoint RUN_DIR, or --head maxsim"),
    (f"align {STORE} --item swap_att/0 --head maxsim --segments --out out", 2, "names no caption segments"),
    (f"train {STORE} --head maxsim --out out --resume --seed 1", 2, "--seed cannot change a resumed run"),
    (f"{EXTRACT} --dataset x --store new --tokenizer bad/empty", 2,
     "--tokenizer is for models whose tokenizer comes from the Hugging Face hub"),
    (f"{EXTRACT} --dataset x --store new --model ViT-B-16-SigLIP --tokenizer bad/empty", 2,
     "holds no tokenizer ViT-B-16-SigLIP can load"),
    (f"{EXTRACT.replace('sc/annotations', 'bad/sc_other')} --dataset sc --store store", 2,  # without --replace
     "dataset 'sc' already exists in store with different content"),
    ("cache import bad/other_content.h5 --store store --dataset sc", 2, "dataset 'sc' already exists in store"),
    ("cache import export.h5 --store store --dataset sc --replace --bogus", 2, "No such option '--bogus'"),
]

SLURM = [  # sbatch present (bin/sbatch on PATH), settings that cannot work; dask's config set in-process
    ({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}, "needs jobqueue.slurm.cores and"),
    ({"jobqueue.slurm.cores": 2, "jobqueue.slurm.memory": None}, "needs jobqueue.slurm.memory"),
    ({"jobqueue.slurm": "cores=2"}, "jobqueue.slurm must be a mapping"),
    ({"jobqueue.slurm.cores": 0, "jobqueue.slurm.memory": "1GB"}, "jobqueue.slurm.cores must be a whole number"),
    ({"jobqueue.slurm.cores": "two", "jobqueue.slurm.memory": "1GB"}, "jobqueue.slurm.cores must be a whole"),
    ({"jobqueue.slurm.cores": 1, "jobqueue.slurm.memory": "1GB", "jobqueue.slurm.processes": 0},
     "jobqueue.slurm.processes must be a whole number from 1 to cores (1)"),
    ({"jobqueue.slurm.cores": 1, "jobqueue.slurm.memory": "1GB", "jobqueue.slurm.processes": 3},
     "jobqueue.slurm.processes must be a whole number from 1 to cores (1)"),
    ({"jobqueue.slurm.cores": 1, "jobqueue.slurm.memory": "lots"}, "jobqueue.slurm.memory must be a size"),
    ({"jobqueue.slurm.cores": 1, "jobqueue.slurm.memory": "0"}, "jobqueue.slurm.memory must be a size"),
    ({"jobqueue.slurm.cores": 1, "jobqueue.slurm.memory": "1GB", "jobqueue.slurm.interface": "nope0"},
     "jobqueue.slurm.interface is 'nope0'"),
]

STORE_KINDS = [
    *[(f"{command} notastore{rest}", 2, "no vlcache store at notastore") for command, rest in [
        ("cache info", ""), ("cache ls", ""), ("cache verify", ""), ("cache rm", " sc"), ("cache gc", ""),
        ("cache gc", " --collect"), ("cache compact", ""), ("cache export", " --dataset sc out.h5")]],
    *[(f"{command} --store notastore --dataset sc {rest}", 2, "no vlcache store at notastore") for command, rest in [
        ("train", "--head maxsim --out out"), ("eval", "--head global --out out"), ("diagnose", "--out out"),
        ("align", "--item swap_att/0 --head maxsim --out out"), ("finetune", "--model vlcache-tiny --out out")]],
    ("probe --store notastore --world bad --out out", 2, "no vlcache store at notastore"),
    (f"{EXTRACT} --dataset x --store notastore", 2, "notastore is not a vlcache store (vlcache.json is missing) and"),
    ("cache import export.h5 --store notastore", 2, "notastore is not a vlcache store"),
    (f"{EXTRACT} --dataset x --store bad/text.txt", 2, "bad/text.txt is a file, not a vlcache store"),
    ("cache import export.h5 --store bad/text.txt", 2, "bad/text.txt is a file, not a vlcache store"),
    ("cache gc bad/text.txt --collect", 2, "no vlcache store at bad/text.txt"),
    ("cache compact bad/text.txt", 2, "no vlcache store at bad/text.txt"),
    (f"{EXTRACT} --dataset x --store sc", 2, "sc is not a vlcache store"),  # the source's own folder
    (f"{EXTRACT} --dataset x --store store/datasets", 2, "store/datasets is not a vlcache store"),
    *[(f"{command} future{rest}", 2, "schema") for command, rest in [
        ("cache info", ""), ("cache verify", ""), ("cache gc", " --collect"), ("cache compact", ""),
        ("cache rm", " sc")]],
    ("train --store future --dataset sc --head maxsim --out out", 2, "schema"),
    (f"{EXTRACT} --dataset x --store future", 2, "schema"),
    ("cache import export.h5 --store future", 2, "schema"),
]

UNWRITABLE = [
    *[(f"{command} --out {out}", 2, fragment) for command in [
        f"train {STORE} --head maxsim", f"eval {STORE} --head global", f"diagnose {STORE}",
        "probe --store store --world bad", f"align {STORE} --item swap_att/0 --head maxsim", "plot report"]
      for out, fragment in [("/proc/vlcache-out", "cannot write --out"),
                            ("bad/text.txt/out", "is a file, not a folder")]],
    (f"train {STORE} --head maxsim --out bad/text.txt", 2, "text.txt"),
    (f"eval {STORE} --head global --out bad/text.txt", 2, "text.txt"),
    ("plot report --out bad/text.txt", 2, "text.txt"),
    (f"finetune {STORE} --model vlcache-tiny --out s3://bucket/ft", 2, "is a URL"),
    (f"finetune {STORE} --model vlcache-tiny --out bad/text.txt", 2, "text.txt"),
    ("demo --out s3://bucket/demo", 2, "is a URL"),
    ("demo --out bad/text.txt", 2, "text.txt"),
    ("reproduce --coco sc --sugarcrepe sc/annotations --bivlc bad/text.txt --trohn bad/text.txt --model vlcache-tiny "
     "--out s3://bucket/paper", 2, "is a URL"),
    (f"{EXTRACT} --dataset x --store /proc/vlcache-store", 2, "cannot write the store at /proc/vlcache-store"),
    (f"{EXTRACT} --dataset x --store bad/text.txt/store", 2, "is a file, not a folder"),
    ("cache import export.h5 --store /proc/vlcache-store", 2, "cannot write the store at /proc/vlcache-store"),
    (f"{EXPORT_TO} /proc/vlcache.h5", 2, "/proc/vlcache.h5"),
    (f"{EXPORT_TO} bad/text.txt/x.h5", 2, "x.h5"),
    (f"{EXPORT_TO} --format clip-retrieval /proc/vlcache-cr", 2, "/proc/vlcache-cr"),
    (f"{EXPORT_TO} s3://bucket/x.h5", 2, "is a URL"),
    (f"{EXPORT_TO} store/x.h5", 2, "is inside the store"),
]

BAD_OPTIONS_JSON = [
    *[(f"{command} --storage-options {value}", 2, fragment) for command in [
        "cache info store", "cache verify store", f"train {STORE} --head maxsim --out out",
        f"eval {STORE} --head global --out out", f"{EXTRACT} --dataset x --store new"]
      for value, fragment in [("'{not json'", "not valid JSON"), ("'[1, 2]'", "not a JSON object ({...}) but an array"),
                              ("@bad/list.json", "bad/list.json is not a JSON object")]],
    (f"{EXTRACT} --dataset x --store new --source-options '\"text\"'", 2, "not a JSON object ({...}) but a string"),
    (f"finetune {STORE} --model vlcache-tiny --out out --source-options 1", 2,
     "not a JSON object ({...}) but a number"),
]

CASES = {
    "missing or unreadable paths": MISSING,
    "wrong formats": WRONG_FORMAT,
    "malformed JSON, JSONL, CSV, Parquet, tar, HDF5, logs and reports": MALFORMED,
    "out-of-range options": OUT_OF_RANGE,
    "unknown names": UNKNOWN_NAMES,
    "conflicting options and content": CONFLICTS,
    "wrong store kinds": STORE_KINDS,
    "output paths that cannot be written": UNWRITABLE,
    "options that are not JSON objects": BAD_OPTIONS_JSON,
}
TABLE = [(category, *case) for category, cases in CASES.items() for case in cases]


def test_the_table_has_two_hundred_cases_across_every_command():
    assert len(TABLE) + len(SLURM) >= 200, len(TABLE) + len(SLURM)
    commands = {_command(shlex.split(args)) for _, args, _, _ in TABLE}
    assert commands >= {"extract", "train", "eval", "diagnose", "probe", "plot", "align", "finetune", "reproduce",
                        "demo", "cache ls", "cache info", "cache verify", "cache rm", "cache gc", "cache compact",
                        "cache export", "cache import"}, commands
    print("cases per category:", dict(Counter(category for category, *_ in TABLE)), "slurm:", len(SLURM))


def _command(argv: list[str]) -> str:
    return " ".join(argv[:2]) if argv[0] == "cache" else argv[0]


# -- the fixtures: one small real store, run, report and export; the bad files ------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    annotations, images = write_sugarcrepe_example(str(root / "sc"), sizes={"swap_att": 4, "add_att": 4},
                                                   n_images=6, seed=3)
    run_extract(annotations, "sugarcrepe", "sc", root / "store", images_root=images)
    (root / "tiny.json").write_text(json.dumps(TINY_RUN))
    train(str(root / "store"), "sc", "maxsim", str(root / "run"), split=None, config_path=str(root / "tiny.json"),
          device="cpu", progress=False)
    with CliRunner().isolation():
        assert main(["eval", "--store", str(root / "store"), "--dataset", "sc", "--head", "global", "--out",
                     str(root / "report"), "--device", "cpu", "--quiet"]) == 0
        assert main(["cache", "export", str(root / "store"), "--dataset", "sc", str(root / "export.h5")]) == 0
    _bad_files(root)
    return root


def _bad_files(root) -> None:
    bad = root / "bad"
    (bad / "empty").mkdir(parents=True)
    (root / "notastore").mkdir()
    (root / "notastore" / "notes.txt").write_text("not a store")
    (root / "future").mkdir()
    (root / "future" / "vlcache.json").write_text(json.dumps({"format": "vlcache", "schema_version": "99.0"}))
    (root / "bin").mkdir()
    (root / "bin" / "sbatch").write_text("#!/bin/sh\necho 1\n")
    (root / "bin" / "sbatch").chmod(0o755)
    files = {
        "text.txt": "just some text\n", "list.json": "[1, 2]", "binary.bin": bytes(range(256)) * 8,
        "binary.json": b"\xff\xfe\x00" * 100, "binary.jsonl": b"\xff\xfe\x00" * 100,
        "coco_ok.json": {"images": [{"id": 1, "file_name": "missing.jpg"}],
                         "annotations": [{"image_id": 1, "caption": "a cat"}]},
        "coco_image_strings.json": {"images": ["a.jpg", "b.jpg"], "annotations": []},
        "coco_images_object.json": {"images": {"1": "a.jpg"}, "annotations": []},
        "coco_no_annotations.json": {"images": [{"id": 1, "file_name": "a.jpg"}]},
        "coco_annotation_list.json": {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [[1, "a cat"]]},
        "coco_unknown_image.json": {"images": [{"id": 1, "file_name": "a.jpg"}],
                                    "annotations": [{"image_id": 7, "caption": "a cat"}]},
        "coco_image_id_list.json": {"images": [{"id": 1, "file_name": "a.jpg"}],
                                    "annotations": [{"image_id": [1], "caption": "a cat"}]},
        "coco_empty_caption.json": {"images": [{"id": 1, "file_name": "a.jpg"}],
                                    "annotations": [{"image_id": 1, "caption": "  "}]},
        "coco_number_caption.json": {"images": [{"id": 1, "file_name": "a.jpg"}],
                                     "annotations": [{"image_id": 1, "caption": 5}]},
        "coco_truncated.json": '{"images": [{"id": 1, "file_na',
        "coco_top_list.json": [{"id": 1}],
        "coco_no_items.json": {"images": [], "annotations": []},
        "trohn_superscript.json": [{"image_id": "²", "caption": "a cat", "negative_caption": "a dog"}],
        "trohn_image_id_list.json": [{"image_id": [1], "caption": "a cat", "negative_caption": "a dog"}],
        "trohn_image_id_bool.json": [{"image_id": True, "caption": "a cat", "negative_caption": "a dog"}],
        "trohn_image_id_negative.json": [{"image_id": -4, "caption": "a cat", "negative_caption": "a dog"}],
        "trohn_image_id_blank.json": [{"image_id": " ", "caption": "a cat", "negative_caption": "a dog"}],
        "trohn_entry_string.json": ["a cat"],
        "trohn_no_caption.json": [{"image_id": 1, "negative_caption": "a dog"}],
        "trohn_no_negative.json": [{"image_id": 1, "caption": "a cat"}],
        "trohn_object.json": {"image_id": 1, "caption": "a cat", "negative_caption": "a dog"},
        "trohn_truncated.json": '[{"image_id": 1, "capt',
        "trohn_empty.json": [],
        "trohn_negative_image_number.json": [{"image_id": 1, "caption": "a cat", "negative_caption": "a dog",
                                              "negative_image": 5}],
        "sc_list/swap_att.json": [1, 2],
        "sc_no_caption/swap_att.json": {"0": {"filename": "000000.png", "negative_caption": "x"}},
        "sc_empty_entries/swap_att.json": {},
        "sc_truncated/swap_att.json": '{"0": {"filename": "000000.png", "capt',
        "sc_other/swap_att.json": {"0": {"filename": "000001.png", "caption": "another caption",
                                         "negative_caption": "caption another"}},
        "not_json.jsonl": "not json\n",
        "no_caption.jsonl": '{"image": "a.png"}\n',
        "string_boxes.jsonl": '{"image": "a.png", "caption": "a cat", "boxes": ["left", "right"]}\n',
        "empty.jsonl": "",
        "no_caption.csv": "image,title\na.png,a cat\n",
        "header_only.csv": "image,caption\n",
        "numbers.csv": "image,caption\na.png,\n",
        "truncated.parquet": b"PAR1\x00\x00",
        "bivlc_no_negatives.jsonl": '{"image": "a.png", "caption": "c"}\n',
        "truncated.tar": b"\x00" * 100 + b"ustar",
        "report_wrong_shape.json": {"head": "x", "dataset": "y", "caption_accuracy": "nope"},
        "report_string_accuracy.json": {"head": "x", "dataset": "y",
                                        "caption_accuracy": {"by_subset": {"all": "high"}, "items": 3}},
        "report_no_panels.json": {"head": "x", "dataset": "y"},
        "report_bad_bivlc.json": {"head": "x", "dataset": "y", "bivlc": {
            "items": 2, "i2t": {"by_type": {"all": 0.5}}, "t2i": {"by_type": {"all": 0.5}}, "group": {}}},
        "report_bad_chance.json": {"head": "x", "dataset": "y", "caption_accuracy": {
            "by_subset": {"all": 0.5, "swap": 0.4}, "items": 3, "chance_by_subset": {"all": 0.5}}},
        "report_head_number.json": {"head": 3, "dataset": "y",
                                    "caption_accuracy": {"by_subset": {"all": 0.5}, "items": 3}},
        "log_string_loss/log.jsonl": _lines(START, {"step": 1, "loss": "high"}),
        "log_not_object/log.jsonl": _lines(START, [1, 2]),
        "log_no_start/log.jsonl": _lines({"step": 1, "loss": 1.0}),
        "log_no_steps/log.jsonl": _lines(START),
        "log_string_step/log.jsonl": _lines(START, {"step": "one", "loss": 1.0}),
        "log_bad_eval/log.jsonl": _lines(START, {"step": 1, "loss": 1.0}, {"step": 1, "eval": {"sc": 0.5}}),
        "log_not_json/log.jsonl": _lines(START) + "{not json\n",
        "world/train.jsonl": "", "world/test_id.jsonl": "",
        "config_unknown.json": {"train": {"bogus": 1}},
        "config_wrong_type.json": {"train": {"steps": "many"}},
        "config_zero_steps.json": {"train": {"steps": 0}},
        "config_zero_batch.json": {"train": {"batch_size": 0}},
        "config_zero_width.json": {"head": {"dim": 0}},
    }
    for name, content in files.items():
        path = bad / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    pq.write_table(pa.table({"image": ["a.png"], "title": ["a cat"]}), bad / "no_caption.parquet")
    pq.write_table(pa.table({"image": pa.array([], pa.string()), "caption": pa.array([], pa.string())}),
                   bad / "zero_rows.parquet")
    pq.write_table(pa.table({"x": [1]}), bad / "table.parquet")
    _bad_exports(root, bad)


def _bad_exports(root, bad) -> None:
    """HDF5 files that are not exports, or exports damaged one way each."""
    with h5py.File(bad / "plain.h5", "w") as f:
        f["x"] = [1, 2, 3]
    export = (root / "export.h5").read_bytes()
    (bad / "truncated.h5").write_bytes(export[: len(export) // 3])
    with h5py.File(root / "export.h5") as f:
        chunk = f["embeddings/image_patches"].id.get_chunk_info(0)
    flipped = bytearray(export)
    for i in range(chunk.byte_offset + chunk.size // 4, chunk.byte_offset + chunk.size // 2):
        flipped[i] ^= 0xFF  # the chunk no longer inflates: h5py's "Can't synchronously read data"
    (bad / "flipped.h5").write_bytes(bytes(flipped))
    for name, change in [("no_tables.h5", lambda f: f.__delitem__("tables")),
                         ("future.h5", lambda f: f.attrs.__setitem__("export_version", 99)),
                         ("bad_spec.h5", lambda f: f.attrs.__setitem__("space", "{not json")),
                         ("other_content.h5", _other_content)]:
        shutil.copy(root / "export.h5", bad / name)
        with h5py.File(bad / name, "r+") as f:
            change(f)


def _other_content(f) -> None:
    """The same dataset name over other items: one item's id changed."""
    ids = f["tables/items/item_id"]
    values = ids.asstr()[()].tolist()
    values[0] = "renamed/0"
    del f["tables/items/item_id"]
    f.create_dataset("tables/items/item_id", data=values, dtype=h5py.string_dtype())


# -- running a case ----------------------------------------------------------------------------------------------

def _snapshot(root) -> dict[str, tuple]:
    """Every file (size, modification time) and folder under `root`."""
    seen = {}
    for folder, _, files in os.walk(root):
        seen[folder] = ("folder",)
        for name in files:
            stat = os.stat(os.path.join(folder, name))
            seen[os.path.join(folder, name)] = (stat.st_size, stat.st_mtime_ns)
    return seen


def _run(argv: list[str]) -> tuple[int | str, str]:
    """`vlcache ARGV` in this process, as the installed command runs it: (exit code, stderr). An exception
    that escapes is the traceback a user would see."""
    with CliRunner().isolation() as (_, err, _):
        try:
            code = main(argv)
        except BaseException:  # noqa: BLE001 -- anything escaping main is what the suite exists to catch
            code = "traceback:\n" + traceback.format_exc()
        return code, err.getvalue().decode("utf-8", "replace")


def _check(root, argv: list[str], code: int, fragment: str) -> None:
    before = _snapshot(root)
    got, err = _run(argv)
    after = _snapshot(root)
    assert got == code, f"{shlex.join(argv)}: exit {got}, stderr {err!r}"
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), \
        f"{shlex.join(argv)}: not one line: {err!r}"
    assert "Traceback" not in err and fragment in err, f"{shlex.join(argv)}: {err!r} lacks {fragment!r}"
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"{shlex.join(argv)} wrote {changed}"


@pytest.mark.parametrize("category, args, code, fragment", TABLE,
                         ids=[f"{category}: {args}"[:110] for category, args, _, _ in TABLE])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(world, monkeypatch, category, args, code, fragment):
    monkeypatch.chdir(world)
    _check(world, shlex.split(args), code, fragment)


@pytest.mark.parametrize("settings, fragment", SLURM, ids=[f"slurm: {s}"[:110] for s, _ in SLURM])
def test_slurm_settings_that_cannot_work_are_one_line(world, monkeypatch, settings, fragment):
    import dask

    monkeypatch.chdir(world)
    monkeypatch.setenv("PATH", f"{world / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with dask.config.set(settings):
        _check(world, shlex.split(f"{EXTRACT} --dataset x --store new --slurm-jobs 1"), 2, fragment)


def test_the_installed_command_says_the_same_one_line(world, tmp_path):
    """Not in-process, where dask reads its config from files: sbatch on PATH and no jobqueue.slurm settings in
    the config folder DASK_CONFIG names (the issue's traceback), through `python -m workflows.cli`."""
    config = tmp_path / "dask"
    config.mkdir()
    (config / "jobqueue.yaml").write_text("jobqueue:\n  slurm:\n    queue: debug\n")
    env = {**os.environ, "DASK_CONFIG": str(config), "PATH": f"{world / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    before = _snapshot(world)
    done = subprocess.run([sys.executable, "-m", "workflows.cli", *shlex.split(EXTRACT), "--dataset", "x", "--store",
                           "new", "--slurm-jobs", "2"], cwd=world, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: --slurm-jobs needs jobqueue.slurm.cores and"), done.stderr
    assert _snapshot(world) == before
