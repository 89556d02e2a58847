"""vlcache-tiny behind a gate, for fault tests: after its first FREE_BATCHES image batches, a worker
process waits before each batch until the gate folder holds a file named `open`, having said which
process (and SLURM job) holds a shard by touching `held-<pid>-<job>` there. A test kills that process
or job at that known point, opens the gate, and checks that another worker finishes the shard: no
timing race. Without VLCACHE_TEST_GATE set it is vlcache-tiny exactly (a space of its own)."""

import dataclasses
import os
import time
from pathlib import Path

from pipeline.encoders import EncoderRequest
from pipeline.encoders.openclip import OpenClipEncoder, describe_model

NAME = "tests.gated_encoder:GatedEncoder"
FREE_BATCHES = 2


def request(model: str = "vlcache-tiny") -> EncoderRequest:
    return EncoderRequest(model, encoder=NAME)


class GatedEncoder(OpenClipEncoder):
    @classmethod
    def describe(cls, request: EncoderRequest):
        return dataclasses.replace(describe_model(request), encoder=NAME)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = 0

    def encode_images(self, pixels):
        self.batches += 1
        gate = os.environ.get("VLCACHE_TEST_GATE")
        if gate and self.batches > FREE_BATCHES and not Path(gate, "open").exists():
            Path(gate, f"held-{os.getpid()}-{os.environ.get('SLURM_JOB_ID', 'none')}").touch()
            while not Path(gate, "open").exists():
                time.sleep(0.05)
        return super().encode_images(pixels)


def environment(gate) -> dict:
    """This process's environment, with the gate set and the repository importable (workers load this
    module by name)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": root, "VLCACHE_TEST_GATE": str(gate)}


def wait_for_holder(gate, run, deadline: float = 300) -> tuple[int, str]:
    """(pid, SLURM job id or "none") of the first worker waiting at the gate; fails if the run `run`
    (a Popen) ends first."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        held = sorted(Path(gate).glob("held-*"))
        if held:
            _, pid, job = held[0].name.split("-")
            return int(pid), job
        if run.poll() is not None:
            raise AssertionError(f"the run ended before any worker reached the gate: {run.communicate()}")
        time.sleep(0.1)
    raise AssertionError("no worker reached the gate")
