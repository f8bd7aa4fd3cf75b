"""SumTree against plain NumPy references: last-write-wins updates, totals and prefix-sum search."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from misical_gym.agents import SumTree

# Priorities mix exact zeros (empty leaves), tiny values and large ones to stress round-off.
priority_values = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-12, max_value=1e-6),
    st.floats(min_value=1e-3, max_value=1e3),
)


def reference_leaves(capacity: int, batches: list[tuple[list[int], list[float]]]) -> np.ndarray:
    """Apply update batches one write at a time, in order, so the last write wins."""
    leaves = np.zeros(capacity)
    for indices, priorities in batches:
        for index, priority in zip(indices, priorities, strict=True):
            leaves[index] = priority
    return leaves


def reference_find(leaves: np.ndarray, value: float) -> int:
    """The leaf j with cumsum[j-1] <= value < cumsum[j], by a linear scan over non-empty leaves."""
    running = 0.0
    last_nonempty = -1
    for j, priority in enumerate(leaves):
        if priority > 0.0:
            if value < running + priority:
                return j
            running += priority
            last_nonempty = j
    return last_nonempty


@st.composite
def update_sequences(draw: st.DrawFn) -> tuple[int, list[tuple[list[int], list[float]]]]:
    capacity = draw(st.integers(min_value=1, max_value=40))
    batches = []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        size = draw(st.integers(min_value=0, max_value=2 * capacity))
        indices = draw(st.lists(st.integers(0, capacity - 1), min_size=size, max_size=size))
        priorities = draw(st.lists(priority_values, min_size=size, max_size=size))
        batches.append((indices, priorities))
    return capacity, batches


def build(capacity: int, batches: list[tuple[list[int], list[float]]]) -> SumTree:
    tree = SumTree(capacity)
    for indices, priorities in batches:
        tree.update(np.array(indices, dtype=np.int64), np.array(priorities))
    return tree


@settings(max_examples=150, deadline=None)
@given(update_sequences())
def test_updates_match_last_write_wins_reference(case: tuple[int, list]) -> None:
    capacity, batches = case
    tree = build(capacity, batches)
    leaves = reference_leaves(capacity, batches)
    np.testing.assert_array_equal(tree[np.arange(capacity)], leaves)
    assert tree.total == pytest.approx(leaves.sum(), rel=1e-12, abs=0.0)


@settings(max_examples=150, deadline=None)
@given(update_sequences(), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20))
def test_find_matches_cumulative_sum_and_never_returns_empty(
    case: tuple[int, list], fractions: list[float]
) -> None:
    capacity, batches = case
    tree = build(capacity, batches)
    leaves = reference_leaves(capacity, batches)
    if not leaves.any():
        return
    total = tree.total
    # Fractions of the total plus the edges where round-off bites: 0, the total, past the total.
    values = np.array([f * total for f in fractions] + [0.0, total, np.nextafter(total, np.inf)])
    found = tree.find(values)
    assert np.all(leaves[found] > 0.0)
    cumsum = np.cumsum(leaves)
    tolerance = 1e-9 * total
    for value, leaf in zip(values, found, strict=True):
        # The tree sums in a different order than a linear scan, so only values clear of a
        # boundary must land on exactly the reference leaf; all must lie in the leaf's range.
        lower = cumsum[leaf] - leaves[leaf]
        assert lower - tolerance <= min(value, cumsum[-1]) <= cumsum[leaf] + tolerance
        if np.all(np.abs(cumsum - value) > tolerance):
            assert leaf == reference_find(leaves, value)


@settings(max_examples=100, deadline=None)
@given(update_sequences(), st.integers(min_value=1, max_value=20), st.integers(0, 2**32 - 1))
def test_sample_is_stratified_and_never_empty(
    case: tuple[int, list], batch_size: int, seed: int
) -> None:
    capacity, batches = case
    tree = build(capacity, batches)
    leaves = reference_leaves(capacity, batches)
    if not leaves.any():
        return
    indices, priorities = tree.sample(batch_size, np.random.default_rng(seed))
    assert indices.dtype == np.int64 and indices.shape == (batch_size,)
    np.testing.assert_array_equal(priorities, leaves[indices])
    assert np.all(priorities > 0.0)
    upper = np.cumsum(leaves)
    lower = upper - leaves
    total, tolerance = upper[-1], 1e-9 * upper[-1]
    for i, leaf in enumerate(indices):
        # Draw i comes from stratum i: the leaf's interval meets [i, i + 1) * total / n.
        assert lower[leaf] - tolerance <= (i + 1) * total / batch_size
        assert upper[leaf] + tolerance >= i * total / batch_size


def test_find_skips_empty_leaves_at_float_edges() -> None:
    tree = SumTree(8)
    tree.update(np.array([1, 2, 5]), np.array([0.1, 0.2, 0.3]))
    values = np.array([-1e-12, 0.0, 0.1, 0.3, 0.6, np.nextafter(0.6, 1.0), 1.0, np.inf])
    found = tree.find(values)
    assert set(found.tolist()) <= {1, 2, 5}
    assert found[0] == 1 and found[-1] == 5


def test_repeated_indices_in_one_batch_last_write_wins_and_parents_follow() -> None:
    tree = SumTree(5)
    tree.update(np.array([3, 0, 3, 3, 0]), np.array([9.0, 1.0, 0.0, 2.0, 4.0]))
    np.testing.assert_array_equal(tree[np.arange(5)], [4.0, 0.0, 0.0, 2.0, 0.0])
    assert tree.total == 6.0
    assert tree.find(np.array([3.99, 4.0])).tolist() == [0, 3]


def test_capacity_one() -> None:
    tree = SumTree(1)
    tree.update(np.array([0]), np.array([2.5]))
    assert tree.total == 2.5
    assert tree.find(np.array([0.0, 2.5, 10.0])).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("indices", "priorities", "message"),
    [
        ([0, 1], [1.0], "must match"),
        ([4], [1.0], r"\[0, 4\)"),
        ([-1], [1.0], r"\[0, 4\)"),
        ([0], [-1.0], "non-negative"),
        ([0], [np.nan], "finite"),
        ([0], [np.inf], "finite"),
    ],
)
def test_bad_updates_raise_and_leave_tree_unchanged(
    indices: list[int], priorities: list[float], message: str
) -> None:
    tree = SumTree(4)
    tree.update(np.array([2]), np.array([1.0]))
    with pytest.raises(ValueError, match=message):
        tree.update(np.array([0, *indices]), np.array([7.0, *priorities]))
    np.testing.assert_array_equal(tree[np.arange(4)], [0.0, 0.0, 1.0, 0.0])
    assert tree.total == 1.0


def test_find_or_sample_on_empty_tree_and_bad_arguments_raise() -> None:
    tree = SumTree(3)
    with pytest.raises(ValueError, match="empty"):
        tree.find(np.array([0.0]))
    with pytest.raises(ValueError, match="empty"):
        tree.sample(4, np.random.default_rng(0))
    tree.update(np.array([1]), np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        tree.find(np.array([np.nan]))
    with pytest.raises(ValueError, match="batch_size"):
        tree.sample(0, np.random.default_rng(0))


@pytest.mark.parametrize("capacity", [0, -3, 2.5, True])
def test_bad_capacity_raises(capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        SumTree(capacity)


def test_getitem_out_of_range_raises() -> None:
    with pytest.raises(IndexError):
        SumTree(3)[np.array([3])]


def test_state_dict_round_trip_is_bit_identical() -> None:
    rng = np.random.default_rng(0)
    tree = SumTree(37)
    for _ in range(20):
        tree.update(rng.integers(0, 37, 10), rng.random(10) ** 3)
    restored = SumTree(37)
    restored.load_state_dict(tree.state_dict())
    assert restored.total == tree.total
    values = rng.random(1000) * tree.total
    np.testing.assert_array_equal(restored.find(values), tree.find(values))
    with pytest.raises(ValueError, match="capacity"):
        SumTree(36).load_state_dict(tree.state_dict())
