"""The interface every dataset of this package follows."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class SegmentationDataset(Protocol):
    """A labelled image collection.

    ``dataset[i]`` is ``(image, label)``: ``image`` uint8 ``[H, W, 3]``; ``label`` uint8 ``[H, W]``
    with train ids ``0..C-1`` and 255 (ignore). ``spec`` is a JSON-serialisable dict, with a
    ``"kind"`` key, from which :func:`misical_gym.data.open_dataset` rebuilds the same dataset
    (a feature store keeps it to reach its images again).
    """

    class_names: tuple[str, ...]
    image_ids: tuple[str, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...

    @property
    def spec(self) -> dict[str, Any]: ...
