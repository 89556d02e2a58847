"""The fine-tuning baselines every study measures local heads against: the encoder fine-tuned end to
end on the heads' training data, on its captions alone and NegCLIP-style with its hard negatives,
once per seed. Each result is handed back as the request that extracts it into a space of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

from pipeline.encoders import EncoderRequest
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.loop import extract_request, finetune

from .parallel import Runner, one_after_another

# Method name -> whether the dataset's hard negatives are extra candidates.
FINETUNED = {"fine-tuned": False, "fine-tuned + hard negatives": True}


def finetuned_encoders(store: str, dataset: str, request: EncoderRequest, runs: str, config: FinetuneConfig,
                       seeds: tuple[int, ...], *, split: str | None = None, device: str = "auto",
                       progress: bool = True, run: Runner = one_after_another,
                       ) -> Iterator[tuple[str, int, EncoderRequest, dict]]:
    """(method, seed, request extracting the result, the run's record) for each baseline and seed;
    runs in `runs/<method>-seed<seed>`, one after another, or by `run` (workflows.parallel)."""
    jobs = [(method, seed) for method in FINETUNED for seed in seeds]
    calls = [dict(store_uri=store, dataset=dataset, request=request, out=os.path.join(runs, _run_name(method, seed)),
                  config=replace(config, hard_negatives=FINETUNED[method], seed=seed), split=split, device=device,
                  progress=progress) for method, seed in jobs]
    records = run(finetune, calls)
    for (method, seed), record in zip(jobs, records):
        yield method, seed, extract_request(record, request), record


def _run_name(method: str, seed: int) -> str:
    return f"{method.replace(' + ', '-').replace(' ', '-')}-seed{seed}"
