"""Returned annotations, read back into a store's train ids: one registry of readers.

``read_annotations(path, fmt, store)`` returns one :class:`Annotation` per annotated image;
``misical label`` turns them into oracle counts. Every reader names images by the dataset's own
file names and refuses images the store does not know, labels of another size and files made
for another store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from misical_gym.annotations.base import Annotation

if TYPE_CHECKING:
    from misical_gym.store import FeatureStore

__all__ = ["FORMATS", "Annotation", "read_annotations"]


def _masks(path: Path, store: FeatureStore) -> list[Annotation]:
    from misical_gym.annotations.masks import read_masks

    return read_masks(path, store)


def _coco(path: Path, store: FeatureStore) -> list[Annotation]:
    from misical_gym.annotations.coco import read_coco

    return read_coco(path, store)


def _labelstudio(path: Path, store: FeatureStore) -> list[Annotation]:
    from misical_gym.annotations.labelstudio import read_labelstudio

    return read_labelstudio(path, store)


_READERS: dict[str, Callable[[Path, FeatureStore], list[Annotation]]] = {
    "masks": _masks,
    "coco": _coco,
    "labelstudio": _labelstudio,
}
FORMATS: tuple[str, ...] = tuple(_READERS)


def read_annotations(path: Path, fmt: str, store: FeatureStore) -> list[Annotation]:
    """Read the annotations at ``path`` in format ``fmt`` for ``store``.

    Raises:
        ValueError: ``fmt`` is not a known format.
        DatasetError: the reader refuses the file (see each reader).
    """
    if fmt not in _READERS:
        raise ValueError(f"unknown annotation format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _READERS[fmt](Path(path), store)
