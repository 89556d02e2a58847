"""Shard geometry: the one home of row-to-shard arithmetic, token packing and its expansion."""

import numpy as np

from cache_schemas.layout import Geometry, token_rows


def test_texts_pack_their_tokens_from_their_shards_first_token_row():
    geometry = Geometry(rows_per_shard=4, chunk_rows=2)
    rows, n_tokens = np.array([0, 1, 2, 5, 6, 9]), np.array([3, 1, 2, 4, 1, 2])
    offsets = geometry.token_offsets(rows, n_tokens, context_length=10)
    assert offsets.tolist() == [0, 3, 4, 40, 44, 80]  # shard s starts at s * 4 * 10
    assert geometry.shard_of(rows).tolist() == [0, 0, 0, 1, 1, 2]
    assert geometry.token_base(2, 10) == 80
    assert geometry.token_offsets(np.array([], np.int64), np.array([], np.int64), 10).size == 0


def test_token_rows_expand_offsets_in_the_order_asked():
    assert token_rows([5, 0, 20], [2, 3, 1]).tolist() == [5, 6, 0, 1, 2, 20]
    assert token_rows([7], [0]).size == 0 and token_rows([], []).size == 0
