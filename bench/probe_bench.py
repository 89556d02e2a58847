"""What the frozen tokens carry: `vlcache probe` on the demo's two stores, built as the demo builds
them: the positive control (ControlEncoder, the demo's control world) and the world encoder
(vlcache-world pretrained with the demo's settings on its 8,000-scene world). Writes probe_bench.json
and probe_bench.md. About 20 minutes on 2 cores, most of it pretraining (a checkpoint already in
--work is reused).

    python bench/probe_bench.py --work runs/probe-bench --out runs/bench"""

from __future__ import annotations

import argparse
import os
import platform

from results import publish

from pipeline.extract import ExtractOptions, extract
from workflows.control import build_control
from workflows.demo import SPLITS, DemoConfig, _encoder_request, _pretrained_encoder
from workflows.probe import run_probes, write_report
from workflows.world import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/probe-bench")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    config = DemoConfig()
    control_dir, world_dir = os.path.join(args.work, "control"), os.path.join(args.work, "world")
    if not os.path.exists(os.path.join(control_dir, "store")):
        build_control(control_dir, config.control)
    if not os.path.exists(os.path.join(world_dir, "store")):
        world = generate(os.path.join(world_dir, "world"), config.world)
        checkpoint = _pretrained_encoder(world_dir, world["jsonl"]["train"], config.pretrain, True)
        for split in SPLITS:
            extract(world["jsonl"][split], "bivlc", f"world-{split}", _encoder_request(checkpoint),
                    os.path.join(world_dir, "store"), options=ExtractOptions(rows_per_shard=1024, progress=False))
    results = {"machine": platform.node(), "cores": os.cpu_count(),
               "control": run_probes(os.path.join(control_dir, "store"), os.path.join(control_dir, "world"), "control"),
               "world": run_probes(os.path.join(world_dir, "store"), os.path.join(world_dir, "world"))}
    tables = [f"## {name}\n\n" + write_report(results[name], os.path.join(args.work, f"probe-{name}"))
              for name in ("control", "world")]
    publish(args.out, "probe_bench", results, "\n".join(tables))


if __name__ == "__main__":
    main()
