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


class MerkleTree:
    """A tree over a fixed list of leaf hashes. Subtree roots are memoised, so every
    proof after the first costs O(log n) hashes rather than a pass over the leaves."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self._leaves = leaf_hashes
        self._roots: dict[tuple[int, int], bytes] = {}

    def __len__(self) -> int:
        return len(self._leaves)

    def range_root(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi])."""
        if hi - lo == 1:
            return self._leaves[lo]
        if hi == lo:
            return EMPTY_ROOT
        cached = self._roots.get((lo, hi))
        if cached is None:
            k = lo + _split(hi - lo)
            cached = node_hash(self.range_root(lo, k), self.range_root(k, hi))
            self._roots[(lo, hi)] = cached
        return cached

    def root(self, size: int | None = None) -> bytes:
        return self.range_root(0, len(self) if size is None else size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(m, D[n]): the audit path proving leaf `index` is in the first `size`."""
        n = len(self) if size is None else size
        if not 0 <= index < n <= len(self):
            raise ValueError(f"leaf {index} is not in a tree of {n}")
        path: list[bytes] = []
        lo, hi = 0, n
        while hi - lo > 1:
            k = lo + _split(hi - lo)
            if index < k:
                path.append(self.range_root(k, hi))
                hi = k
            else:
                path.append(self.range_root(lo, k))
                lo = k
        path.reverse()  # RFC 9162 lists the path from the leaf up
        return path

    def consistency_proof(self, first_size: int, size: int | None = None) -> list[bytes]:
        """PROOF(m, D[n]): proves the first `first_size` leaves are a prefix of the
        first `size`."""
        n = len(self) if size is None else size
        if not 0 < first_size <= n <= len(self):
            raise ValueError(f"no consistency proof from {first_size} to {n}")
        return self._subproof(first_size, 0, n, True)

    def _subproof(self, m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        if m == hi - lo:
            return [] if complete else [self.range_root(lo, hi)]
        k = _split(hi - lo)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, complete), self.range_root(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self.range_root(lo, lo + k)]


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (already hashed with `leaf_hash`)."""
    return MerkleTree(leaf_hashes).root()


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    return MerkleTree(leaf_hashes).inclusion_proof(index)


def consistency_proof(first_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    return MerkleTree(leaf_hashes).consistency_proof(first_size)


class MerkleFrontier:
    """A growing tree kept as the roots of its perfect subtrees, largest first: appending
    a leaf and taking the root cost O(log n) and memory stays O(log n), however long
    the log grows. This is what the event store persists beside its views."""

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if len(nodes) != size.bit_count():
            raise ValueError(f"a frontier of {size} leaves has {size.bit_count()} nodes")
        self.size = size
        self.nodes = list(nodes)

    def append(self, leaf: bytes) -> None:
        self.nodes.append(leaf)
        self.size += 1
        carry = self.size
        while carry & 1 == 0:  # merge equal-sized subtrees, as binary addition carries
            right = self.nodes.pop()
            self.nodes[-1] = node_hash(self.nodes[-1], right)
            carry >>= 1

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        result = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            result = node_hash(node, result)
        return result

    def copy(self) -> MerkleFrontier:
        return MerkleFrontier(self.size, self.nodes)


def chain_hash(previous: bytes, leaf: bytes) -> bytes:
    """One link of a case's hash chain: SHA-256(previous head || leaf hash). The chain
    starts from CHAIN_START; any dropped, reordered or altered message changes every
    head after it."""
    return hashlib.sha256(previous + leaf).digest()


CHAIN_START = bytes(32)


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
