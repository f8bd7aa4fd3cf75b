"""The patch grid over an image and the deterministic init / pool split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatchGrid:
    """A ``rows`` x ``cols`` grid of patches over an image of any size.

    Patches are ``height // rows`` by ``width // cols`` pixels; the last row and the last column
    absorb the remainders, so every pixel belongs to exactly one patch.
    """

    rows: int
    cols: int

    def __post_init__(self) -> None:
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"PatchGrid.{name} must be a positive integer, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> PatchGrid:
        """Parse ``"ROWSxCOLS"`` (e.g. ``"4x4"``)."""
        parts = text.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"grid must look like ROWSxCOLS (e.g. 4x4), got {text!r}")
        return cls(int(parts[0]), int(parts[1]))

    @property
    def num_patches(self) -> int:
        return self.rows * self.cols

    def edges(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Row and column edges: patch (r, c) spans ``ys[r]:ys[r+1]`` and ``xs[c]:xs[c+1]``."""
        if height < self.rows or width < self.cols:
            raise ValueError(
                f"a {height}x{width} image is smaller than the {self.rows}x{self.cols} patch grid"
            )
        ys = np.arange(self.rows + 1) * (height // self.rows)
        xs = np.arange(self.cols + 1) * (width // self.cols)
        ys[-1], xs[-1] = height, width
        return ys, xs

    def boxes(self, height: int, width: int) -> np.ndarray:
        """int64 ``[rows*cols, 4]`` boxes ``(y0, x0, y1, x1)``, row-major, end-exclusive."""
        ys, xs = self.edges(height, width)
        r, c = np.divmod(np.arange(self.num_patches), self.cols)
        return np.stack([ys[r], xs[c], ys[r + 1], xs[c + 1]], axis=1)

    def patch_index_map(self, height: int, width: int) -> np.ndarray:
        """An ``[height, width]`` int64 map of the row-major patch index of every pixel."""
        ys, xs = self.edges(height, width)
        row_of = np.searchsorted(ys, np.arange(height), side="right") - 1
        col_of = np.searchsorted(xs, np.arange(width), side="right") - 1
        return row_of[:, None] * self.cols + col_of[None, :]

    def pool_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum ``values`` (``[H, W, ...]``) over each patch: ``[rows*cols, ...]``."""
        ys, xs = self.edges(values.shape[0], values.shape[1])
        # reduceat sums contiguous runs between edges: rows first, then columns.
        by_rows = np.add.reduceat(values, ys[:-1], axis=0)
        return np.add.reduceat(by_rows, xs[:-1], axis=1).reshape(
            self.num_patches, *values.shape[2:]
        )

    def areas(self, height: int, width: int) -> np.ndarray:
        """Pixel count of every patch, ``[rows*cols]`` int64."""
        b = self.boxes(height, width)
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def split_indices(n: int, init_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically split ``range(n)`` into sorted init and pool indices.

    Args:
        n: Number of items.
        init_fraction: Share of items that go to init (labelled from the start), in (0, 1).
        seed: Seed of the permutation; the same seed always gives the same split.

    Returns:
        ``(init, pool)``, two sorted int64 arrays that partition ``range(n)``.
    """
    if n < 2:
        raise ValueError(f"need at least 2 items to split into init and pool, got {n}")
    if not 0.0 < init_fraction < 1.0:
        raise ValueError(f"init_fraction must be in (0, 1), got {init_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_init = min(max(1, round(n * init_fraction)), n - 1)
    return np.sort(order[:n_init]), np.sort(order[n_init:])
