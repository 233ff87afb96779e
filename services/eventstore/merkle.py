"""Merkle tree hashing, inclusion and consistency proofs, as RFC 9162 (Certificate
Transparency v2, section 2.1) defines them. Pure functions over leaf hashes.

    leaf hash  = SHA-256(0x00 || leaf data)
    node hash  = SHA-256(0x01 || left || right)
    MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two below n

The event store's leaves are the exact stored bytes of each event (subject, newline,
body: what the actor signed), in stream order. A signed checkpoint (tree size, root)
then lets anyone holding an exported copy prove that a given event is in the log
(inclusion) and that a later log extends an earlier one without rewriting it
(consistency).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (already hashed with `leaf_hash`)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _split(n)
    return node_hash(root(leaf_hashes[:k]), root(leaf_hashes[k:]))


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]): the audit path proving leaf `index` is in the tree."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ValueError(f"leaf {index} is not in a tree of {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(index, leaf_hashes[:k]), root(leaf_hashes[k:])]
    return [*inclusion_proof(index - k, leaf_hashes[k:]), root(leaf_hashes[:k])]


def _climb_right_edge(fn: int, sn: int) -> tuple[int, int]:
    """RFC 9162: "right-shift fn and sn equally until either LSB(fn) is set or fn is 0"
    (the first shift always happens)."""
    while True:
        fn >>= 1
        sn >>= 1
        if fn & 1 or fn == 0:
            return fn, sn


def verify_inclusion(
    index: int, tree_size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 2.1.3.2: does `proof` put leaf hash `leaf` at `index` under the root?"""
    if index >= tree_size or index < 0:
        return False
    fn, sn, r = index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                fn, sn = _climb_right_edge(fn, sn)
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def consistency_proof(first_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]): proves the tree of the first m leaves is a prefix of this one."""
    n = len(leaf_hashes)
    if not 0 < first_size <= n:
        raise ValueError(f"no consistency proof from {first_size} to {n}")
    return _subproof(first_size, leaf_hashes, True)


def _subproof(m: int, leaf_hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaf_hashes)
    if m == n:
        return [] if complete else [root(leaf_hashes)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaf_hashes[:k], complete), root(leaf_hashes[k:])]
    return [*_subproof(m - k, leaf_hashes[k:], False), root(leaf_hashes[:k])]


def verify_consistency(
    first_size: int,
    second_size: int,
    first_root: bytes,
    second_root: bytes,
    proof: Sequence[bytes],
) -> bool:
    """RFC 9162 2.1.4.2: is the tree (first_size, first_root) a prefix of
    (second_size, second_root)?"""
    if first_size > second_size or first_size < 0:
        return False
    if first_size == second_size:
        return not proof and first_root == second_root
    if first_size == 0:
        return not proof  # the empty tree is a prefix of every tree
    if not proof:
        return False
    path = list(proof)
    if first_size & (first_size - 1) == 0:  # an exact power of two
        path.insert(0, first_root)
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                fn, sn = _climb_right_edge(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
