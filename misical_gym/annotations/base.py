"""What every annotation reader returns, and the checks they share.

An :class:`Annotation` is one image's returned label in the store's train ids. Readers name
images by the dataset's own file names and match them to the store's images here, so an
annotation for an image the store does not know, or of another size, is refused the same way
whichever tool wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from misical_gym.data.classes import IGNORE_INDEX
from misical_gym.errors import DatasetError, StoreError

if TYPE_CHECKING:
    from misical_gym.store import FeatureStore


@dataclass(frozen=True)
class Annotation:
    """One image's returned label.

    Attributes:
        image_index: The image's index in the store (``store.image_ids``).
        label: uint8 ``[H, W]`` at the image's original size: train ids, 255 = not annotated.
        void: Optional bool ``[H, W]``: pixels annotated as the dataset's ignore class (CamVid's
            Unlabelled), so annotated but of no class; they are 255 in ``label``.
    """

    image_index: int
    label: np.ndarray
    void: np.ndarray | None = None

    @property
    def annotated(self) -> np.ndarray:
        """bool ``[H, W]``: the pixels an annotator labelled (a class, or void)."""
        known = self.label != IGNORE_INDEX
        return known if self.void is None else known | self.void


def match_image(store: FeatureStore, name: str, where: str) -> int:
    """The store's index of the image ``name`` (a file name, with or without folders or suffix).

    The name matches an image id exactly (ids are paths without suffix; a COCO JSON source's
    images also match their ``file_name``), else by its last component when exactly one image
    has that file name.

    Raises:
        DatasetError: no image of the store has that name, or several do.
    """
    ids = _image_lookup(store)
    path = PurePosixPath(str(name).replace("\\", "/"))
    for key in (str(path), str(path.with_suffix(""))):
        if key in ids["exact"]:
            return ids["exact"][key]
    matches = ids["stem"].get(path.name) or ids["stem"].get(path.stem, [])
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DatasetError(
            f"{where}: image {name!r} matches {len(matches)} images of store "
            f"{store.path.name!r} ({', '.join(store.image_ids[i] for i in matches[:3])}); "
            "name it by its path in the dataset"
        )
    raise DatasetError(
        f"{where}: image {name!r} is not an image of store {store.path.name!r} "
        f"({len(store.image_ids)} images, e.g. {store.image_ids[0]!r}); annotations can only be "
        "taken in for the store's own images"
    )


def check_label(store: FeatureStore, annotation: Annotation, where: str) -> None:
    """Refuse a label whose size is not its image's, or that holds an unknown train id.

    Raises:
        DatasetError: the label is not uint8 ``[H, W]`` of the image's size, or holds a value
            that is neither a class of the store nor 255.
    """
    index = annotation.image_index
    size = tuple(int(v) for v in store.image_sizes[index])
    label = annotation.label
    void = annotation.void
    if (
        label.dtype != np.uint8
        or label.shape != size
        or (void is not None and (void.dtype != np.bool_ or void.shape != size))
    ):
        raise DatasetError(
            f"{where}: the annotation of image {store.image_ids[index]!r} is "
            f"{'x'.join(map(str, label.shape))} {label.dtype}, but the image is "
            f"{size[0]}x{size[1]} (HxW); annotate the image at its original size"
        )
    values = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    bad = values[(values >= store.num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DatasetError(
            f"{where}: the annotation of image {store.image_ids[index]!r} holds train id(s) "
            f"{bad[:10].tolist()}, but store {store.path.name!r} has {store.num_classes} classes"
        )


def check_store_id(
    store: FeatureStore, store_id: object, fingerprint: object, where: Path | str
) -> None:
    """Refuse a file that names another store, or this store's name with a foreign fingerprint.

    Raises:
        DatasetError: ``store_id`` is not the store's name, or ``fingerprint`` is none of its
            fingerprints (now or before its updates).
    """
    if store_id != store.path.name or not (
        isinstance(fingerprint, str) and store.knows_fingerprint(fingerprint)
    ):
        raise DatasetError(
            f"{where} was made for store {store_id!r} (fingerprint {fingerprint!r}), not for "
            f"store {store.path.name!r} (fingerprint {store.fingerprint!r}); take annotations "
            "in with the store their picks came from"
        )


class _ImageLookup(TypedDict):
    exact: dict[str, int]
    """Image index by id, and by file name with and without its suffix."""
    stem: dict[str, list[int]]
    """Image indices by the last part of the name (several images may share one)."""


def _image_lookup(store: FeatureStore) -> _ImageLookup:
    """Image indices by id and by file name; a COCO JSON source's images (whose ids are COCO
    ids) also by their ``file_name``, the name annotation tools give them."""
    cache = store.__dict__.get("_image_lookup")
    if cache is None:
        exact: dict[str, int] = {}
        stems: dict[str, list[int]] = {}

        def add(index: int, keys: tuple[str, ...], stem: str) -> None:
            for key in keys:
                exact.setdefault(key, index)
            if index not in stems.setdefault(stem, []):
                stems[stem].append(index)

        for index, image_id in enumerate(store.image_ids):  # ids are paths without suffix
            add(index, (image_id,), PurePosixPath(image_id).name)
        for index, file_name in _coco_file_names(store):
            path = PurePosixPath(file_name)
            add(index, (file_name, str(path.with_suffix(""))), path.stem)
        cache = _ImageLookup(exact=exact, stem=stems)
        store.__dict__["_image_lookup"] = cache
    return cache


def _coco_file_names(store: FeatureStore) -> list[tuple[int, str]]:
    """``(image index, file_name)`` of the store's images from COCO JSON sources."""
    from misical_gym.data import open_dataset

    sources, items = store.dataset.get("sources", []), store.dataset.get("items", [])
    opened: dict[int, Any] = {}
    names = []
    try:
        for index, (source, item) in enumerate(items):
            if sources[source].get("kind") == "coco-json":
                if source not in opened:
                    opened[source] = open_dataset(sources[source])
                names.append((index, opened[source].file_name(item)))
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise StoreError(
            f"{store.path}: the manifest's record of its images is damaged ({exc!r})"
        ) from None
    return names
