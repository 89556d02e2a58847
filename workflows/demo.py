"""The README's demo: generate a small SugarCrepe-format set, extract it with the tiny encoder into a
store under the run folder, and show what the store holds."""

from __future__ import annotations

import json
import os

from cache_schemas import open_store, verify
from cache_schemas.info import describe_store
from pipeline.cluster import ClusterConfig
from pipeline.encoder import EncoderRequest
from pipeline.extract import ExtractOptions, Summary, extract

from .examples import write_sugarcrepe_example


def run_demo(out: str, progress: bool = True) -> Summary:
    annotations, images = write_sugarcrepe_example(os.path.join(out, "source"))
    store = os.path.join(out, "store")
    summary = extract(annotations, "sugarcrepe", "sugarcrepe-example", EncoderRequest("vlcache-tiny"), store,
                      images_root=images, cluster=ClusterConfig(), options=ExtractOptions(progress=progress))
    report = verify(open_store(store))
    with open(os.path.join(out, "store-info.json"), "w") as f:
        json.dump(describe_store(open_store(store)), f, indent=2)
    print("\n".join(summary.lines()))
    print(f"verify: {'ok' if report.ok else report.problems}; store info in {out}/store-info.json")
    return summary
