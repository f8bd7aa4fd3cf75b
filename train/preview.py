"""``misical select --preview FILE.png``: a contact sheet of the picks, to look at before sending.

One thumbnail per pick, in rank order: the patch with a margin of the image around it, the
patch's box outlined, and under it the rank, the score and the image's file name. The images
are read from the store's dataset again (:func:`misical_gym.data.store_image`), so the store
must reach them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from misical_gym.atomic import atomic_path
from misical_gym.errors import StoreError
from misical_gym.store import FeatureStore

THUMB = 160
"""Side of a thumbnail in pixels."""
CAPTION = 28
"""Height of the two caption lines under a thumbnail."""
OUTLINE = (255, 40, 40)


def contact_sheet(
    store: FeatureStore, selection: dict[str, Any], *, columns: int = 8, limit: int = 100
) -> Image.Image:
    """The contact sheet of the first ``limit`` picks of ``selection`` (from ``select_patches``).

    Raises:
        StoreError: the store does not record where its images are, or they moved.
    """
    from misical_gym.data import store_image
    from misical_gym.errors import DatasetError

    check_preview(store)
    picks = selection["picks"][:limit]
    rows = max(1, -(-len(picks) // columns))
    title = 20
    sheet = Image.new("RGB", (columns * THUMB, title + rows * (THUMB + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text(
        (4, 4),
        f"{selection['target']!r}: picks 1-{len(picks)} of {len(selection['picks'])} "
        f"({selection.get('mode', 'episode')} mode, {selection['policy']})",
        fill="black",
        font=font,
    )
    for rank, pick in enumerate(picks):
        patch = int(pick["patch_id"])
        try:
            image = store_image(store, int(store.patches[patch, 0]))[0]
        except DatasetError as exc:
            raise StoreError(f"--preview cannot read the store's images: {exc}") from None
        thumb = _thumbnail(image, pick["box"])
        x, y = (rank % columns) * THUMB, title + (rank // columns) * (THUMB + CAPTION)
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        name = str(pick.get("file_name", pick["image_id"]))
        draw.text((x + 3, y + THUMB), f"#{rank + 1}  {pick['score']:.4g}", fill="black", font=font)
        draw.text((x + 3, y + THUMB + 13), _fit(name, 24), fill="dimgray", font=font)
    return sheet


def check_preview(store: FeatureStore) -> None:
    """Raise a :class:`StoreError` unless the store records where its images are."""
    if not store.can_reach_images:
        raise StoreError(
            f"--preview needs the store's images, and {store.path} does not record where they "
            "are (stores written by misical prepare do); leave --preview out"
        )


def write_preview(
    path: str | os.PathLike[str], store: FeatureStore, selection: dict[str, Any]
) -> Path:
    """Write the contact sheet of ``selection`` to ``path`` (PNG), atomically."""
    sheet = contact_sheet(store, selection)
    with atomic_path(path, ".png") as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def _thumbnail(image: np.ndarray, box: list[int]) -> Image.Image:
    """The box with half its size of margin on every side, outlined, scaled to fit THUMB."""
    y0, x0, y1, x1 = box
    h, w = image.shape[:2]
    my, mx = max(1, (y1 - y0) // 2), max(1, (x1 - x0) // 2)
    top, left = max(0, y0 - my), max(0, x0 - mx)
    crop = Image.fromarray(image[top : min(h, y1 + my), left : min(w, x1 + mx)])
    scale = THUMB / max(crop.width, crop.height)
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    thumb = crop.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR)
    outline = [(x0 - left) * scale, (y0 - top) * scale, (x1 - left) * scale - 1]
    outline.append((y1 - top) * scale - 1)
    ImageDraw.Draw(thumb).rectangle(
        [outline[0], outline[1], outline[2], outline[3]], outline=OUTLINE, width=2
    )
    return thumb


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, keeping its end (file names differ at the end)."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]
