"""Forgeries for the adversarial suite: hand-edited stores and hand-made datasets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from misical_gym.store import MANIFEST, file_crc32


def edit_manifest(store: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Rewrite the manifest as ``edit`` returns it (or as it leaves it, when it returns None)."""
    manifest = json.loads((store / MANIFEST).read_text())
    edited = edit(manifest)
    (store / MANIFEST).write_text(json.dumps(manifest if edited is None else edited))


def edit_array(store: Path, name: str, edit: Callable[[np.ndarray], None]) -> None:
    """Change an array in place and record its new checksum, as a forger would."""
    path = store / f"{name}.npy"
    data = np.load(path).copy()
    edit(data)
    np.save(path, data)

    def record(manifest: dict[str, Any]) -> None:
        manifest["arrays"][name]["crc32"] = file_crc32(path)

    edit_manifest(store, record)


def write_image(path: Path, size: int = 32, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_coco_json(
    root: Path,
    num_images: int = 6,
    *,
    file_names: dict[int, str] | None = None,
    polygon: list[float] | None = None,
) -> tuple[Path, Path]:
    """A COCO-format dataset of ``num_images`` 32-px JPEGs with one square per image.

    ``file_names`` overrides some images' ``file_name``; ``polygon`` replaces the first
    annotation's polygon. Returns the image folder and the JSON path.
    """
    images_dir = root / "images"
    images, annotations = [], []
    for i in range(1, num_images + 1):
        write_image(images_dir / f"{i}.jpg", seed=i)
        name = (file_names or {}).get(i, f"{i}.jpg")
        images.append({"id": i, "file_name": name, "height": 32, "width": 32})
        square = [4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]
        annotations.append(
            {
                "id": 100 + i,
                "image_id": i,
                "category_id": 1 + i % 2,
                "segmentation": [polygon if polygon is not None and i == 1 else square],
                "area": 256.0,
                "bbox": [4, 4, 16, 16],
                "iscrowd": 0,
            }
        )
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    path = root / "annotations.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return images_dir, path
