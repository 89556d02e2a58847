import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from a model hub
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest

from pipeline.cluster import ClusterConfig
from pipeline.encoders import EncoderRequest
from pipeline.extract import ExtractOptions, extract
from workflows.examples import write_sugarcrepe_example

TINY = EncoderRequest("vlcache-tiny")
# Workers as threads of the test process: a real Dask scheduler without process start-up costs.
IN_PROCESS = ClusterConfig(processes=False)


def run_extract(source, fmt, dataset, store, rows_per_shard=8, request=TINY, **kwargs):
    """Extract with test-sized shards (many shards, so resume and alignment are exercised)."""
    options = ExtractOptions(rows_per_shard=rows_per_shard, progress=False, batch_size=kwargs.pop("batch_size", 16),
                             retry_failed=kwargs.pop("retry_failed", False))
    return extract(str(source), fmt, dataset, request, str(store), cluster=kwargs.pop("cluster", IN_PROCESS),
                   options=options, **kwargs)


@pytest.fixture(scope="session")
def small_sugarcrepe(tmp_path_factory):
    """A SugarCrepe-format set: 7 subsets of 4 items over 12 images."""
    root = tmp_path_factory.mktemp("sugarcrepe")
    subsets = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
    sizes = {name: 4 for name in subsets}
    return write_sugarcrepe_example(str(root), sizes=sizes, n_images=12, seed=1)
