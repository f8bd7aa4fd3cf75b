"""A compiled sum tree over leaf priorities, the index behind proportional prioritized replay.

The tree is one flat float64 array in heap order: node ``i`` has children ``2i`` and ``2i + 1``,
the root is node 1, and the leaves start at the first power of two not below ``capacity``. Leaves
past ``capacity`` stay zero. Every internal node is always recomputed as ``left + right`` from its
children, never patched with a delta, so no round-off accumulates and the whole tree is a
deterministic function of its leaves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

_OK = 0
_BAD_INDEX = 1
_BAD_PRIORITY = 2
_EMPTY = 3
_NAN_PREFIX = 4


@njit(cache=True)
def _update_kernel(
    tree: np.ndarray, first_leaf: int, capacity: int, indices: np.ndarray, priorities: np.ndarray
) -> int:
    # Validate everything first so that a bad batch leaves the tree untouched.
    for i in range(indices.shape[0]):
        if indices[i] < 0 or indices[i] >= capacity:
            return _BAD_INDEX
        if not (priorities[i] >= 0.0 and priorities[i] < np.inf):  # also rejects NaN
            return _BAD_PRIORITY
    # Write all leaves in order (the last write of a repeated index wins), then recompute the
    # touched nodes one level at a time, bottom up: each level's children are final by then.
    # Level by level, the batch's memory accesses are independent and overlap.
    nodes = np.empty(indices.shape[0], dtype=np.int64)
    for i in range(indices.shape[0]):
        nodes[i] = first_leaf + indices[i]
        tree[nodes[i]] = priorities[i]
    level = first_leaf
    while level > 1:
        for i in range(nodes.shape[0]):
            node = nodes[i] >> 1
            tree[node] = tree[2 * node] + tree[2 * node + 1]
            nodes[i] = node
        level >>= 1
    return _OK


@njit(cache=True)
def _descend(tree: np.ndarray, first_leaf: int, values: np.ndarray, out: np.ndarray) -> None:
    """Write into ``out`` the leaf of each prefix sum in ``values`` (which it consumes)."""
    out[:] = 1
    # All descents advance one level at a time, so their cache misses overlap.
    level = first_leaf
    while level > 1:
        for i in range(out.shape[0]):
            left_child = 2 * out[i]
            left = tree[left_child]
            # Only ever step into a subtree with positive mass. A prefix that round-off pushed
            # past the right subtree's mass (or below zero) then still ends on a non-empty leaf.
            if left > 0.0 and (values[i] < left or not tree[left_child + 1] > 0.0):
                out[i] = left_child
            else:
                values[i] -= left
                out[i] = left_child + 1
        level >>= 1
    out -= first_leaf


@njit(cache=True)
def _find_kernel(
    tree: np.ndarray, first_leaf: int, prefix_sums: np.ndarray, out: np.ndarray
) -> int:
    if not tree[1] > 0.0:
        return _EMPTY
    for i in range(prefix_sums.shape[0]):
        if np.isnan(prefix_sums[i]):
            return _NAN_PREFIX
    _descend(tree, first_leaf, prefix_sums.copy(), out)
    return _OK


@njit(cache=True)
def _stratified_kernel(
    tree: np.ndarray, first_leaf: int, uniforms: np.ndarray, out: np.ndarray, priorities: np.ndarray
) -> int:
    if not tree[1] > 0.0:
        return _EMPTY
    # Stratum i is [i, i + 1) * total / n; one uniform draw by mass inside each.
    width = tree[1] / uniforms.shape[0]
    values = (np.arange(uniforms.shape[0]) + uniforms) * width
    _descend(tree, first_leaf, values, out)
    for i in range(out.shape[0]):
        priorities[i] = tree[first_leaf + out[i]]
    return _OK


class SumTree:
    """Sum tree over ``capacity`` non-negative leaf priorities.

    Attributes:
        capacity: Number of leaves. All start at priority zero ("empty").
    """

    def __init__(self, capacity: int) -> None:
        """Create a tree whose leaves all have priority zero.

        Args:
            capacity: Number of leaves, at least 1.

        Raises:
            ValueError: If ``capacity`` is not a positive integer.
        """
        if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = int(capacity)
        self._first_leaf = 1 << (self.capacity - 1).bit_length()
        self._tree = np.zeros(2 * self._first_leaf, dtype=np.float64)

    @property
    def total(self) -> float:
        """Sum of all leaf priorities."""
        return float(self._tree[1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the tree array."""
        return self._tree.nbytes

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set leaf priorities in one batch.

        Args:
            indices: Leaf indices in ``[0, capacity)``; may repeat, in which case the last write
                wins.
            priorities: Finite, non-negative priorities, one per index. Zero empties a leaf.

        Raises:
            ValueError: On mismatched lengths, an index out of range or a negative or non-finite
                priority. The tree is left unchanged.
        """
        indices = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
        priorities = np.ascontiguousarray(priorities, dtype=np.float64).reshape(-1)
        if indices.shape != priorities.shape:
            raise ValueError(
                f"got {indices.size} indices but {priorities.size} priorities; they must match"
            )
        code = _update_kernel(self._tree, self._first_leaf, self.capacity, indices, priorities)
        if code == _BAD_INDEX:
            raise ValueError(f"leaf indices must lie in [0, {self.capacity})")
        if code == _BAD_PRIORITY:
            raise ValueError("priorities must be finite and non-negative")

    def find(self, prefix_sums: np.ndarray) -> np.ndarray:
        """Return, for each prefix sum ``v``, the leaf ``j`` with ``c[j-1] <= v < c[j]``.

        ``c`` is the cumulative sum of the leaf priorities. Values below 0 or at/above
        :attr:`total` are treated as 0 or just below the total, and the result is never an empty
        leaf, even where float round-off puts ``v`` on the edge of an empty leaf.

        Args:
            prefix_sums: Values, normally in ``[0, total)``; NaN is rejected.

        Returns:
            int64 leaf indices, one per prefix sum.

        Raises:
            ValueError: If every leaf is empty or a prefix sum is NaN.
        """
        prefix_sums = np.ascontiguousarray(prefix_sums, dtype=np.float64).reshape(-1)
        out = np.empty(prefix_sums.shape[0], dtype=np.int64)
        code = _find_kernel(self._tree, self._first_leaf, prefix_sums, out)
        if code == _EMPTY:
            raise ValueError("cannot search a sum tree whose leaves are all empty")
        if code == _NAN_PREFIX:
            raise ValueError("prefix sums must not be NaN")
        return out

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw leaves with probability proportional to priority, stratified.

        The total mass is cut into ``batch_size`` equal strata and one leaf is drawn by mass
        inside each, so draw ``i`` comes from stratum ``i`` and a batch covers the distribution
        evenly.

        Args:
            batch_size: Number of draws, at least 1.
            rng: Source of the uniform draws.

        Returns:
            int64 leaf indices (never empty leaves) and their float64 priorities.

        Raises:
            ValueError: If every leaf is empty or ``batch_size`` is below 1.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        indices = np.empty(batch_size, dtype=np.int64)
        priorities = np.empty(batch_size, dtype=np.float64)
        code = _stratified_kernel(
            self._tree, self._first_leaf, rng.random(batch_size), indices, priorities
        )
        if code == _EMPTY:
            raise ValueError("cannot sample from a sum tree whose leaves are all empty")
        return indices, priorities

    def __getitem__(self, indices: np.ndarray | int) -> np.ndarray:
        """Return the priorities of the given leaves (float64, same shape as ``indices``)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.capacity):
            raise IndexError(f"leaf indices must lie in [0, {self.capacity})")
        return self._tree[self._first_leaf + indices]

    def state_dict(self) -> dict[str, Any]:
        """Return a copy of the tree's state: its capacity and leaf priorities."""
        leaves = self._tree[self._first_leaf : self._first_leaf + self.capacity]
        return {"capacity": self.capacity, "priorities": leaves.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the leaves from :meth:`state_dict` and rebuild every internal node.

        Args:
            state: A dict made by :meth:`state_dict` of a tree with the same capacity.

        Raises:
            ValueError: If the capacity differs or the priorities are malformed.
        """
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"state is for a tree of capacity {state['capacity']}, not {self.capacity}"
            )
        leaves = np.asarray(state["priorities"], dtype=np.float64)
        if leaves.shape != (self.capacity,):
            raise ValueError(f"priorities must have shape ({self.capacity},), got {leaves.shape}")
        if not np.all(np.isfinite(leaves) & (leaves >= 0.0)):
            raise ValueError("priorities must be finite and non-negative")
        tree = np.zeros_like(self._tree)
        tree[self._first_leaf : self._first_leaf + self.capacity] = leaves
        # Same left + right order as the incremental update, so the rebuilt sums are bit-identical.
        hi = self._first_leaf
        while hi > 1:
            lo = hi // 2
            tree[lo:hi] = tree[2 * lo : 2 * hi : 2] + tree[2 * lo + 1 : 2 * hi : 2]
            hi = lo
        self._tree = tree
