"""Resizing an example for the network: the one rule that prepare and retraining share."""

from __future__ import annotations

import numpy as np


def resize_example(
    image: np.ndarray, label: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (bilinear) and ``label`` (nearest) resized to ``size`` x ``size``, as prepare
    does; retraining on acquired patches resizes the same way."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    resized_label = np.asarray(
        Image.fromarray(label).resize((size, size), Image.Resampling.NEAREST)
    )
    return resized, resized_label
