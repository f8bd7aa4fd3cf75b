"""A folder of images nobody has labelled yet: :class:`UnlabelledImages`.

Its images join a store's pool split with features like any other, and with unknown oracle
counts (the store's label state says so). It yields ``(image, label)`` as every dataset does,
with a label that is all 255 (ignore), so the pipeline needs no second path for it; the store
marks its patches unlabelled, which is what keeps those zeros from being read as counts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.data.classes import IGNORE_INDEX
from misical_gym.data.coco import _check_index, _read_rgb, _require_dir
from misical_gym.data.masks import IMAGE_SUFFIXES
from misical_gym.errors import DatasetError

_LAYOUT = "  <folder>/<name>.<jpg|png|...>     RGB, RGBA or greyscale images (no labels)"


class UnlabelledImages:
    """Every image file directly inside ``images`` (by suffix, sorted by name), without labels.

    Args:
        images: The image folder.
        class_names: The class names of the store the images join.
        image_suffixes: Image suffixes looked for (case-insensitive).

    Attributes:
        image_ids: The file names without suffix: what annotations name the images by.

    Raises:
        DatasetError: the folder is missing, holds no image, or two images share a name.
    """

    def __init__(
        self,
        images: str | os.PathLike[str],
        class_names: Sequence[str],
        image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
    ) -> None:
        self.images = Path(images).expanduser().resolve()
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.image_suffixes = tuple(s.lower() for s in image_suffixes)
        _require_dir(self.images, "unlabelled image folder", _LAYOUT)
        files = sorted(
            path
            for path in self.images.iterdir()
            if path.is_file() and path.suffix.lower() in self.image_suffixes
        )
        if not files:
            raise DatasetError(
                f"no images ({', '.join(self.image_suffixes)}) in the unlabelled image folder "
                f"{self.images}; expected:\n{_LAYOUT}"
            )
        stems = [path.stem for path in files]
        repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
        if repeated:
            raise DatasetError(
                f"images in {self.images} share the name {repeated[0]!r} (with different "
                "suffixes); annotations name images by name, so keep one"
            )
        self._files = tuple(files)
        self.image_ids: tuple[str, ...] = tuple(stems)

    @property
    def spec(self) -> dict[str, Any]:
        """``{"kind": "unlabelled", ...}``: the constructor's arguments."""
        return {
            "kind": "unlabelled",
            "images": str(self.images),
            "class_names": list(self.class_names),
            "image_suffixes": list(self.image_suffixes),
        }

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image uint8 [H, W, 3], label uint8 [H, W] all 255)`` of image ``index``.

        Raises:
            DatasetError: the file is gone or is not a readable image.
        """
        image = _read_rgb(self._files[_check_index(index, len(self), type(self).__name__)])
        return image, np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
