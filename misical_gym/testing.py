"""Synthetic feature stores for tests and benchmarks (no segmenter, no images)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from misical_gym.data.patches import PatchGrid
from misical_gym.layout import DEFAULT_UNCERTAINTY, FeatureLayout
from misical_gym.store import SPLITS, FeatureStore

DEFAULT_CLASS_NAMES: tuple[str, ...] = tuple(f"class{i}" for i in range(8))
"""The default classes of :func:`write_random_store`."""


def write_random_store(
    path: str | os.PathLike[str],
    *,
    num_images: int = 64,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    grid: PatchGrid | None = None,
    image_size: tuple[int, int] = (64, 64),
    split_fractions: tuple[float, float, float] = (0.3, 0.5, 0.2),
    seed: int = 0,
    unlabelled_pool: float = 0.0,
    overwrite: bool = False,
    uncertainty: Sequence[str] = DEFAULT_UNCERTAINTY,
) -> FeatureStore:
    """Write a store of random but self-consistent features and counts, and open it.

    Each patch holds a few classes; presence features are a noisy copy of the true pixel shares,
    so a policy that reads them does better than random. With ``num_images=10_000`` and the 171
    COCO-Stuff classes it has COCO-Stuff 10k's shape (160,000 patches). ``unlabelled_pool`` is
    the share of pool images whose counts are unknown (drawn after everything else, so the
    labelled patches are the same as without it). ``uncertainty`` adds the extra metrics'
    columns (:data:`~misical_gym.layout.UNCERTAINTY_COLUMNS`), uniform within their bounds and
    drawn last, so every other value is a default store's.
    """
    grid = grid or PatchGrid(4, 4)
    rng = np.random.default_rng(seed)
    c = len(class_names)
    n = num_images * grid.num_patches
    h, w = image_size
    area = (h // grid.rows) * (w // grid.cols)
    # Long-tailed class frequencies; every patch has one dominant class and maybe a second one.
    freq = 1.0 / np.arange(1, c + 1)
    freq /= freq.sum()
    main = rng.choice(c, size=n, p=freq)
    second = rng.choice(c, size=n, p=freq)
    share2 = np.where(rng.random(n) < 0.3, rng.uniform(0.05, 0.5, n), 0.0)
    counts = np.zeros((n, c), dtype=np.int32)
    counts[np.arange(n), second] += (share2 * area).astype(np.int32)
    counts[np.arange(n), main] += area - counts[np.arange(n), second]
    shares = counts / area
    presence = np.clip(shares + rng.normal(0, 0.05, (n, c)), 0, None).astype(np.float32)
    presence /= presence.sum(axis=1, keepdims=True)
    class_bald = rng.uniform(0, 0.1, (n, c)).astype(np.float32)
    bald = rng.uniform(0, 0.5, (n, 2)).astype(np.float32)
    bald.sort(axis=1)  # max >= mean
    entropy = rng.uniform(0, np.log(c), (n, 1)).astype(np.float32)
    features = np.concatenate([bald, entropy, presence, class_bald], axis=1)
    split_of_image = rng.choice(len(SPLITS), size=num_images, p=split_fractions)
    image_index = np.repeat(np.arange(num_images), grid.num_patches)
    cell = np.tile(np.arange(grid.num_patches), num_images)
    patches = np.stack(
        [image_index, cell // grid.cols, cell % grid.cols, split_of_image[image_index]], axis=1
    )
    pool = split_of_image == SPLITS.index("pool")
    unknown_image = pool & (rng.random(num_images) < unlabelled_pool)
    labelled = ~unknown_image[image_index]
    counts[~labelled] = 0  # unknown counts are stored as zeros
    layout = FeatureLayout.of(class_names, uncertainty)
    extra = rng.uniform(0, layout.upper_bounds()[3 : layout.num_global], (n, layout.num_global - 3))
    features = np.concatenate([features[:, :3], extra.astype(np.float32), features[:, 3:]], 1)
    return FeatureStore.write(
        path,
        features=features,
        counts=counts,
        labelled=labelled,
        patches=patches,
        image_sizes=np.tile(np.array([[h, w]], dtype=np.int32), (num_images, 1)),
        image_ids=[f"{i:06d}" for i in range(num_images)],
        class_names=class_names,
        grid=grid,
        dataset={"kind": "random", "seed": seed},
        config={"generator": "write_random_store", "seed": seed},
        overwrite=overwrite,
        uncertainty=layout.uncertainty,
    )
