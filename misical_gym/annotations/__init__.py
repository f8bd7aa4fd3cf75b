"""Annotations that come back from annotators, read into label maps of a store's images."""

# provisional: replaced by the annotations package (its registry and readers) at merge

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Annotation:
    """The returned labels of one of a store's images.

    Attributes:
        image_index: The image's index in the store (``store.image_ids``).
        label: uint8 ``[H, W]`` train ids, 255 where nothing was annotated.
    """

    image_index: int
    label: np.ndarray
