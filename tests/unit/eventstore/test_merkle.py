"""RFC 9162 Merkle proofs: every leaf of every tree size proves inclusion, every prefix
proves consistency, and any change to a leaf, a proof or a root is caught."""

from __future__ import annotations

import hashlib

import pytest

from services.eventstore.merkle import (
    CHAIN_START,
    EMPTY_ROOT,
    MerkleFrontier,
    MerkleTree,
    chain_hash,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [leaf_hash(f"mesh.case.c-{i}.case_opened\n{i}".encode()) for i in range(40)]


def test_the_tree_hash_follows_the_definition() -> None:
    assert root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert root(LEAVES[:1]) == LEAVES[0]
    a, b, c = LEAVES[:3]
    assert root([a, b]) == node_hash(a, b)
    assert root([a, b, c]) == node_hash(node_hash(a, b), c)
    # leaves and nodes are domain-separated: a leaf cannot pose as a node
    assert leaf_hash(a + b) != node_hash(a, b)


@pytest.mark.parametrize("size", range(1, 34))
def test_every_leaf_proves_its_inclusion(size: int) -> None:
    tree = LEAVES[:size]
    top = root(tree)
    for index in range(size):
        proof = inclusion_proof(index, tree)
        assert verify_inclusion(index, size, tree[index], proof, top)
        # the same proof does not place another leaf, or the leaf elsewhere
        other = LEAVES[(index + 1) % size] if size > 1 else leaf_hash(b"x")
        assert not verify_inclusion(index, size, other, proof, top)
        if size > 1:
            assert not verify_inclusion((index + 1) % size, size, tree[index], proof, top)
        assert not verify_inclusion(index, size, tree[index], proof, root(LEAVES[: size + 1]))


@pytest.mark.parametrize("second", range(1, 34))
def test_every_prefix_is_consistent_with_the_longer_tree(second: int) -> None:
    longer = LEAVES[:second]
    for first in range(1, second + 1):
        proof = consistency_proof(first, longer)
        assert verify_consistency(first, second, root(longer[:first]), root(longer), proof)


def test_a_rewritten_history_is_not_consistent() -> None:
    honest = LEAVES[:20]
    rewritten = [*LEAVES[:7], leaf_hash(b"a quietly altered event"), *LEAVES[8:20]]
    proof = consistency_proof(10, rewritten)
    assert not verify_consistency(10, 20, root(honest[:10]), root(rewritten), proof)
    reordered = [*LEAVES[:3], LEAVES[4], LEAVES[3], *LEAVES[5:20]]
    proof = consistency_proof(10, reordered)
    assert not verify_consistency(10, 20, root(honest[:10]), root(reordered), proof)


def test_tampered_proofs_fail() -> None:
    tree = LEAVES[:13]
    proof = inclusion_proof(5, tree)
    bad = [*proof[:-1], bytes(32)]
    assert not verify_inclusion(5, 13, tree[5], bad, root(tree))
    cons = consistency_proof(6, tree)
    assert not verify_consistency(6, 13, root(tree[:6]), root(tree), cons[:-1])
    assert not verify_consistency(6, 13, root(tree[:6]), root(tree), [*cons, bytes(32)])


def test_edge_cases_are_refused_or_trivial() -> None:
    assert verify_consistency(0, 5, EMPTY_ROOT, root(LEAVES[:5]), [])
    assert verify_consistency(5, 5, root(LEAVES[:5]), root(LEAVES[:5]), [])
    assert not verify_consistency(6, 5, root(LEAVES[:6]), root(LEAVES[:5]), [])
    with pytest.raises(ValueError, match="not in a tree"):
        inclusion_proof(3, LEAVES[:3])
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_proof(0, LEAVES[:3])


def test_the_certificate_transparency_reference_vectors() -> None:
    """The 8-leaf tree of the RFC 6962 / Certificate Transparency reference tests."""
    data = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ]
    leaves = [leaf_hash(d) for d in data]
    assert leaves[0].hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert root(leaves).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )


def test_the_frontier_grows_to_the_same_root_as_the_whole_tree() -> None:
    frontier = MerkleFrontier()
    assert frontier.root() == EMPTY_ROOT
    for size in range(1, len(LEAVES) + 1):
        frontier.append(LEAVES[size - 1])
        assert frontier.size == size
        assert len(frontier.nodes) == size.bit_count()  # memory is O(log n)
        assert frontier.root() == root(LEAVES[:size])
        # persisted and restored, it carries on where it was
        restored = MerkleFrontier(frontier.size, frontier.nodes)
        assert restored.root() == frontier.root()


def test_a_frontier_with_the_wrong_number_of_nodes_is_refused() -> None:
    with pytest.raises(ValueError, match="has 2 nodes"):
        MerkleFrontier(3, LEAVES[:1])


def test_one_tree_answers_proofs_for_every_prefix() -> None:
    tree = MerkleTree(LEAVES)
    for size in (1, 7, 16, 33, 40):
        top = root(LEAVES[:size])
        assert tree.root(size) == top
        for index in range(size):
            assert tree.inclusion_proof(index, size) == inclusion_proof(index, LEAVES[:size])
        for first in range(1, size + 1):
            proof = tree.consistency_proof(first, size)
            assert verify_consistency(first, size, root(LEAVES[:first]), top, proof)


def test_the_chain_changes_with_any_reorder() -> None:
    def head(leaves: list[bytes]) -> bytes:
        current = CHAIN_START
        for leaf in leaves:
            current = chain_hash(current, leaf)
        return current

    assert head(LEAVES[:3]) != head([LEAVES[1], LEAVES[0], LEAVES[2]])
    assert head(LEAVES[:3]) != head([LEAVES[0], LEAVES[2]])
