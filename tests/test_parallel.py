"""Training runs side by side (workflows/parallel.py): one process per core, results in call order."""

import os

import pytest
import torch

from cache_schemas import VlcacheError
from pipeline.decoding import usable_cores
from workflows.parallel import side_by_side


def where_and_how(value: int) -> tuple[int, int, int]:
    return value, os.getpid(), torch.get_num_threads()


def refuse(value: int) -> int:
    if value == 1:
        raise VlcacheError(f"run {value} refuses")
    return value


@pytest.mark.skipif(usable_cores() < 2, reason="side by side needs two cores")
def test_runs_go_to_processes_with_a_share_of_the_cores_and_come_back_in_order():
    with side_by_side(2) as run:
        results = list(run(where_and_how, [{"value": v} for v in range(6)]))
    assert [value for value, _, _ in results] == list(range(6))
    pids = {pid for _, pid, _ in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert {threads for _, _, threads in results} == {usable_cores() // 2}


@pytest.mark.skipif(usable_cores() < 2, reason="side by side needs two cores")
def test_a_failed_run_raises_its_own_error_in_the_caller():
    with pytest.raises(VlcacheError, match="run 1 refuses"), side_by_side(2) as run:
        list(run(refuse, [{"value": v} for v in range(3)]))


def test_one_process_runs_here_one_after_another_as_consumed():
    with side_by_side(1) as run:
        results = run(where_and_how, [{"value": v} for v in range(3)])
        assert next(results) == (0, os.getpid(), torch.get_num_threads())
        assert [value for value, _, _ in results] == [1, 2]
