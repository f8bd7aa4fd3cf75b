"""``misical label``: returned annotations become oracle counts of the patches they cover.

A patch becomes labelled when its annotation covers every pixel of it (with a class, or as the
dataset's void class): a patch with a pixel left unannotated keeps unknown counts, since a
partial count would read as a full one. Labelling is idempotent: a patch labelled again with
the same counts is left alone, and with different counts is refused (nothing changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from misical_gym.annotations.base import Annotation, check_label
from misical_gym.data.classes import IGNORE_INDEX
from misical_gym.errors import DatasetError
from misical_gym.store import FeatureStore


def label_patches(store: FeatureStore, annotations: Sequence[Annotation]) -> dict[str, Any]:
    """Count the classes of every fully annotated patch, mark it labelled, update the store.

    All annotations are checked before anything is written, and the store is rewritten once,
    atomically (:meth:`FeatureStore.update`); with nothing new it is not touched at all.

    Returns:
        ``{"labelled": newly labelled patches, "unchanged": patches labelled before with the
        same counts, "partial": patches of annotated images not fully covered, "images": n}``.

    Raises:
        DatasetError: a label is of the wrong size or holds unknown ids, two annotations name
            one image, or a labelled patch would get different counts.
    """
    counts, labelled = np.array(store.counts), np.array(store.labelled)
    order = np.argsort(np.asarray(store.patches[:, 0]), kind="stable")
    starts = np.searchsorted(
        np.asarray(store.patches[order, 0]), np.arange(len(store.image_ids) + 1)
    )
    seen: set[int] = set()
    summary = {"labelled": 0, "unchanged": 0, "partial": 0, "images": len(annotations)}
    for annotation in annotations:
        index = annotation.image_index
        name = store.image_ids[index]
        check_label(store, annotation, f"image {name!r}")
        if index in seen:
            raise DatasetError(f"two annotations of image {name!r}; give one per image")
        seen.add(index)
        ids = order[starts[index] : starts[index + 1]]
        annotated = annotation.annotated
        for patch, (y0, x0, y1, x1) in zip(ids, store.boxes(ids), strict=True):
            if not annotated[y0:y1, x0:x1].all():
                summary["partial"] += 1
                continue
            pixels = annotation.label[y0:y1, x0:x1].ravel()
            new = np.bincount(pixels[pixels != IGNORE_INDEX], minlength=store.num_classes)
            if labelled[patch]:
                if not np.array_equal(counts[patch], new):
                    raise DatasetError(
                        f"patch {int(patch)} of image {name!r} is labelled already, with other "
                        f"counts ({counts[patch].tolist()}, now {new.tolist()}); nothing changed"
                    )
                summary["unchanged"] += 1
                continue
            counts[patch], labelled[patch] = new, True
            summary["labelled"] += 1
    if summary["labelled"]:
        store.update(counts=counts, labelled=labelled)
    return summary
