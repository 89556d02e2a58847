"""cache_schemas/README.md's recipes for plain tools (xarray, dask, duckdb), run exactly as written
against a real store, and their results checked against vlcache's own reads."""

import os
import re

import numpy as np
import pytest
import zarr

from cache_schemas import open_store
from cache_schemas.layout import EMBEDDINGS, space_dir

README = os.path.join(os.path.dirname(__file__), "..", "cache_schemas", "README.md")


def _recipes() -> list[str]:
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python recipe\n(.*?)```", f.read(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def ran(small_store):
    """Every recipe executed in order, in one namespace holding only store, key and dataset."""
    pytest.importorskip("xarray")
    pytest.importorskip("duckdb")
    store = small_store
    space = open_store(store).space("vlcache-tiny")
    namespace = {"store": str(store), "key": space.key, "dataset": "sc"}
    recipes = _recipes()
    assert len(recipes) == 4
    for code in recipes:
        exec(code, namespace)
    return namespace, open_store(store)


def test_arrays_name_their_dimensions_and_describe_themselves(ran):
    namespace, store = ran
    space = store.space("vlcache-tiny")
    group = zarr.open_group(os.path.join(namespace["store"], space_dir(space.key), EMBEDDINGS), mode="r")
    for name, array in group.arrays():
        assert array.metadata.dimension_names == space.layouts[name].dims
        assert array.attrs["description"]


def test_xarray_recipe_reads_what_vlcache_reads(ran):
    namespace, store = ran
    space = store.space("vlcache-tiny")
    rows = namespace["images"]["row"].to_numpy()
    np.testing.assert_array_equal(namespace["image_global"].values, space.read("image_global", rows))
    first = namespace["texts"].iloc[0]
    np.testing.assert_array_equal(namespace["caption_tokens"], space.read_tokens(np.array([first["row"]]))[0])


def test_dask_recipe_reads_what_vlcache_reads(ran):
    namespace, store = ran
    space = store.space("vlcache-tiny")
    rows = namespace["images"]["row"].to_numpy()
    expected = space.read("image_patches", rows).astype(np.float32).mean(axis=1)
    np.testing.assert_allclose(namespace["mean_patch"].astype(np.float32), expected, rtol=1e-2, atol=1e-3)


def test_duckdb_recipe_joins_every_item_to_its_rows(ran):
    namespace, store = ran
    space = store.space("vlcache-tiny")
    items = store.dataset("sc").items.to_pandas().sort_values("item_id")
    pairs = namespace["pairs"]
    assert list(pairs["item_id"]) == list(items["item_id"])
    assert list(pairs["image_row"]) == list(space.rows("images", items["image"].tolist()))
    assert list(pairs["caption_row"]) == list(space.rows("texts", items["caption"].tolist()))
    assert namespace["per_dataset"].to_dict("records") == [{"dataset": "sc", "items": len(items)}]
