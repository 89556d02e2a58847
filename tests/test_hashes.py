"""Hash sets tested batch by batch: exact, including hashes that share their 64-bit prefix."""

import hashlib

import numpy as np
import pyarrow as pa

from cache_schemas.hashes import HashSet, prefix_keys


def test_membership_is_exact_even_where_prefixes_collide():
    same_prefix = ["0" * 16 + c * 48 for c in "abc"]
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    exact = HashSet(hashes[:500] + same_prefix[:2])
    asked = pa.array(hashes[400:600] + same_prefix + [None])
    found = exact.contains(asked)
    assert found[:100].all() and not found[100:200].any()
    assert found[200:].tolist() == [True, True, False, False]  # the third shares the prefix, not the hash
    assert exact.members(pa.array(same_prefix)).to_pylist() == same_prefix[:2]


def test_prefix_sets_hold_eight_bytes_a_hash_and_only_ever_add_members():
    same_prefix = ["f" * 16 + c * 48 for c in "ab"]
    loose = HashSet(same_prefix[:1], exact=False)
    assert loose.contains(pa.array(same_prefix)).tolist() == [True, True]  # a collision adds, never drops
    union = HashSet.union([HashSet(["1" * 64], exact=False), loose])
    assert len(union) == 2 and union.contains(pa.array(["1" * 64, "2" * 64])).tolist() == [True, False]
    assert prefix_keys(pa.array(["5feceb66ffc86f38" + "0" * 48])).tolist() == [0x5FECEB66FFC86F38]
    assert HashSet([]).contains(pa.array(["a"])).tolist() == [False]
    assert isinstance(loose.keys, np.ndarray) and loose.keys.dtype == np.uint64
