"""Label Studio: picks out as an import file, annotators' polygons and brush masks back in.

Export (:func:`export_labelstudio`) writes Label Studio's JSON task list: one task per image,
``data.image`` the image's URL, and every picked patch of that image a pre-drawn
``rectanglelabels`` region of a ``predictions`` entry, so annotators see where to label. Label
Studio gives regions in percent of the image (``x``, ``y``, ``width``, ``height`` from the top
left) with the image's ``original_width`` and ``original_height``. The task data also carries
the target, the scores, each patch's box in original pixels, the image's id and file name and
the store's id and fingerprint, so the returned work is matched to the store without guessing.

Images are named by URL: under ``image_root_url`` when given (a web server or bucket that
serves the image folder), else as Label Studio local files, ``/data/local-files/?d=<name>``,
which Label Studio serves when ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true``,
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` is the selection's ``image_root`` and the project
has a local-files storage of that folder.

Import (:func:`read_labelstudio`) reads Label Studio's own JSON export of such a project:
``polygonlabels`` (points in percent of the image) and ``brushlabels`` (Label Studio's RLE of
the RGBA mask, as label-studio-converter decodes it) become the class's train id in a label
map of the image; everything else stays 255, not annotated. The pre-drawn patch rectangles are
ignored; any other region type is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from misical_gym.annotations import Annotation
from misical_gym.data.classes import IGNORE_INDEX
from misical_gym.errors import DatasetError, StoreError
from misical_gym.store import FeatureStore

IMAGE = "image"
"""The name of the Image tag of the labelling config (``to_name`` of every region)."""
PATCH = "patch"
"""The RectangleLabels tag of the pre-drawn patches, and its one label."""
POLYGON = "label"
"""The PolygonLabels tag annotators draw classes with."""
BRUSH = "brush"
"""The BrushLabels tag annotators paint classes with."""
LOCAL_FILES = "/data/local-files/?d="


def labelling_config(class_names: list[str] | tuple[str, ...]) -> str:
    """A Label Studio labelling config for segmenting the picked patches into the store's
    classes: the image, the pre-drawn patches, and polygon and brush tools for every class."""
    labels = "".join(f'<Label value="{_xml(name)}"/>' for name in class_names)
    return (
        "<View>"
        f'<Image name="{IMAGE}" value="$image" zoom="true"/>'
        f'<RectangleLabels name="{PATCH}" toName="{IMAGE}"><Label value="{PATCH}"/>'
        "</RectangleLabels>"
        f'<PolygonLabels name="{POLYGON}" toName="{IMAGE}">{labels}</PolygonLabels>'
        f'<BrushLabels name="{BRUSH}" toName="{IMAGE}">{labels}</BrushLabels>'
        "</View>"
    )


def export_labelstudio(selection: dict[str, Any], *, image_root_url: str | None) -> str:
    """The picks of ``selection`` (from ``select_patches``) as a Label Studio import file."""
    tasks: dict[str, dict[str, Any]] = {}
    for rank, pick in enumerate(selection["picks"]):
        height, width = pick["image_size"]
        task = tasks.get(pick["image_id"])
        if task is None:
            name = quote(pick["file_name"])
            url = f"{image_root_url.rstrip('/')}/{name}" if image_root_url else LOCAL_FILES + name
            task = {
                "data": {
                    IMAGE: url,
                    "image_id": pick["image_id"],
                    "file_name": pick["file_name"],
                    "store_id": selection["store_id"],
                    "store_fingerprint": selection["store_fingerprint"],
                    "target": selection["target"],
                    "target_id": selection["target_id"],
                    "score": pick["score"],  # the image's best: picks come best first
                    "patches": [],
                },
                "predictions": [
                    {
                        "model_version": f"misical {selection['mode']} {selection['policy']}",
                        "score": pick["score"],
                        "result": [],
                    }
                ],
            }
            tasks[pick["image_id"]] = task
        y0, x0, y1, x1 = pick["box"]
        task["data"]["patches"].append(
            {"patch_id": pick["patch_id"], "rank": rank, "score": pick["score"], "box": pick["box"]}
        )
        task["predictions"][0]["result"].append(
            {
                "id": f"patch{pick['patch_id']}",
                "type": "rectanglelabels",
                "from_name": PATCH,
                "to_name": IMAGE,
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "score": pick["score"],
                "value": {
                    "x": 100 * x0 / width,
                    "y": 100 * y0 / height,
                    "width": 100 * (x1 - x0) / width,
                    "height": 100 * (y1 - y0) / height,
                    "rotation": 0,
                    "rectanglelabels": [PATCH],
                },
            }
        )
    return json.dumps(list(tasks.values()), indent=1)


def read_labelstudio(path: str | os.PathLike[str], store: FeatureStore) -> list[Annotation]:
    """The label maps of a Label Studio JSON export of tasks that :func:`export_labelstudio` made.

    Each task's latest annotation that was not cancelled is read; tasks nobody annotated give
    nothing.

    Raises:
        StoreError: a task was exported from another store (id or fingerprint), or names an
            image the store does not have, or of another size.
        DatasetError: the file is not a Label Studio JSON export, or a region is malformed,
            names a class the store does not have, or is of a type this reader does not take.
    """
    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise DatasetError(f"{path}: a Label Studio JSON export is a list of task objects")
    out = []
    for number, task in enumerate(tasks):
        where = f"{path}: task {task.get('id', number)}"
        image = _task_image(task, store, where)
        done = [
            a
            for a in task.get("annotations") or []
            if isinstance(a, dict) and not a.get("was_cancelled")
        ]
        if not done:
            continue
        height, width = (int(v) for v in store.image_sizes[image])
        label = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        results = done[-1].get("result")
        if not isinstance(results, list):
            raise DatasetError(f"{where}: an annotation without a result list")
        for region in results:
            _paint(label, region, store, f"{where}, region {_field(region, 'id')}")
        out.append(Annotation(image_index=image, label=label))
    return out


def _task_image(task: dict[str, Any], store: FeatureStore, where: str) -> int:
    """The store index of the task's image, after checking the store it was exported from."""
    data = task.get("data")
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: no task data")
    fingerprint = data.get("store_fingerprint")
    # Any of the store's fingerprints: picks exported before a label or add-images still match.
    if data.get("store_id") != store.path.name or not (
        isinstance(fingerprint, str) and store.knows_fingerprint(fingerprint)
    ):
        raise StoreError(
            f"{where} was exported from store {data.get('store_id')!r} (fingerprint "
            f"{fingerprint!r}), not from {store.path.name!r} (fingerprint "
            f"{store.fingerprint!r}); read it with the store it was selected from"
        )
    image_id = data.get("image_id")
    if image_id not in store.image_ids:
        raise StoreError(f"{where}: image {image_id!r:.80} is not one of the store's images")
    return store.image_ids.index(image_id)


def _paint(label: np.ndarray, region: Any, store: FeatureStore, where: str) -> None:
    """Paint one result region onto ``label`` (in place)."""
    if not isinstance(region, dict) or not isinstance(region.get("value"), dict):
        raise DatasetError(f"{where}: not a result region (an object with a value)")
    kind, value = region.get("type"), region["value"]
    if kind == "rectanglelabels" and region.get("from_name") == PATCH:
        return  # the pre-drawn patch itself
    if kind not in ("polygonlabels", "brushlabels"):
        raise DatasetError(
            f"{where}: region type {kind!r}; this reader takes polygonlabels and brushlabels"
        )
    height, width = label.shape
    size = (region.get("original_height"), region.get("original_width"))
    if size != (height, width):
        raise StoreError(
            f"{where}: annotated on an image of {size[0]}x{size[1]} (HxW), but the store's image "
            f"is {height}x{width}"
        )
    names = value.get(kind)
    if not (isinstance(names, list) and len(names) == 1 and names[0] in store.class_names):
        raise DatasetError(
            f"{where}: {kind} {names!r:.80} is not one class of the store "
            f"({', '.join(store.class_names[:8])}, ...)"
        )
    class_id = store.class_names.index(names[0])
    if kind == "polygonlabels":
        mask = _polygon_mask(value.get("points"), height, width, where)
    else:
        mask = _brush_mask(value, height, width, where)
    label[mask] = class_id


def _polygon_mask(points: Any, height: int, width: int, where: str) -> np.ndarray:
    """The pixels inside a polygon of ``[x, y]`` points in percent of the image."""
    from PIL import Image, ImageDraw

    if not (
        isinstance(points, list)
        and len(points) >= 3
        and all(
            isinstance(p, list)
            and len(p) == 2
            and all(isinstance(v, int | float) and 0 <= v <= 100 for v in p)
            for p in points
        )
    ):
        raise DatasetError(f"{where}: polygon points must be 3 or more [x, y] in 0..100 percent")
    canvas = Image.new("L", (width, height), 0)
    # Percent of the image to pixel coordinates of pixel corners: 100% is the right edge.
    xy = [(x * width / 100, y * height / 100) for x, y in points]
    ImageDraw.Draw(canvas).polygon(xy, fill=1)
    return np.asarray(canvas, dtype=bool)


def _brush_mask(value: dict[str, Any], height: int, width: int, where: str) -> np.ndarray:
    """The painted pixels of a brush region: the alpha channel of its decoded RGBA mask."""
    rle = value.get("rle")
    if value.get("format") != "rle" or not (
        isinstance(rle, list) and all(isinstance(v, int) and 0 <= v < 256 for v in rle)
    ):
        raise DatasetError(f"{where}: a brush region needs format 'rle' and rle bytes")
    try:
        flat = decode_brush_rle(bytes(rle))
    except ValueError as exc:
        raise DatasetError(f"{where}: damaged brush RLE ({exc})") from None
    if flat.size != height * width * 4:
        raise StoreError(
            f"{where}: the brush mask holds {flat.size // 4} pixels, the image {height * width}"
        )
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def decode_brush_rle(data: bytes) -> np.ndarray:
    """Label Studio's brush RLE (thi.ng's rle-pack) to its flat array of values.

    The stream holds bits, most significant first: the value count (32 bits), the word size
    minus 1 (5 bits), four run-length field sizes minus 1 (4 bits each); then blocks of a flag
    bit, a 2-bit field size index and a length minus 1: a run of one repeated word when the
    flag is set, else that many literal words.

    Raises:
        ValueError: the stream ends early.
    """
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    position = 0

    def read(count: int) -> int:
        nonlocal position
        if position + count > bits.size:
            raise ValueError("the stream ends inside a block")
        chunk = bits[position : position + count]
        position += count
        return int(chunk.dot(1 << np.arange(count - 1, -1, -1, dtype=np.uint64)))

    num = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8 if word <= 8 else np.uint32)
    i = 0
    while i < num:
        repeated = read(1)
        end = min(num, i + 1 + read(sizes[read(2)]))
        if repeated:
            out[i:end] = read(word)
        else:
            for k in range(i, end):
                out[k] = read(word)
        i = end
    return out


def _field(region: Any, key: str) -> Any:
    return region.get(key) if isinstance(region, dict) else None


def _xml(text: str) -> str:
    """``text`` escaped for an XML attribute."""
    return (
        text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    )
