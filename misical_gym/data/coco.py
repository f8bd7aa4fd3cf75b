"""Loaders for COCO-Stuff 10k, COCO-Stuff 164k and any COCO-format JSON annotations.

All three yield ``(image uint8 [H, W, 3], label uint8 [H, W])`` with train ids and 255 (ignore),
and read files only when an item is asked for. Construction checks the layout cheaply (folders,
lists, JSON contents); problems with one image's files surface in ``__getitem__`` as a
:class:`~misical_gym.errors.DatasetError` that names the file and what was expected.

COCO-Stuff numbering: ids 1..182 (0 = unlabelled); the 171 ids that occur map in order onto train
ids 0..170 (:data:`~misical_gym.data.classes.coco_id_to_train_id`); everything else is 255.

- **COCO-Stuff 10k v1.1** (:class:`CocoStuff10k`): the ``.mat`` variable ``S`` holds COCO ids.
  Release v1.0 stored the same maps as MATLAB v7.3 (HDF5) files, which scipy cannot read; those
  are read with h5py and transposed, because MATLAB writes arrays column-major.
- **COCO-Stuff 164k** (:class:`CocoStuff164k`): ``stuffthingmaps`` PNGs hold ``id - 1`` (0..181)
  and 255 for unlabelled. They are read raw: converting a palette PNG would turn the indices into
  colours.
- **COCO-format JSON** (:class:`CocoJson`): see its docstring for the class numbering and the
  order in which overlapping annotations are painted.

pycocotools, scipy, h5py and Pillow are imported only when a dataset reads files, so importing
this module stays light.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from misical_gym.data.classes import (
    COCO_OTHER_ID,
    COCO_STUFF_CLASSES,
    COCO_STUFF_IDS,
    IGNORE_INDEX,
    coco_id_to_train_id,
)
from misical_gym.errors import DatasetError

if TYPE_CHECKING:
    from pycocotools.coco import COCO

PathLike = str | os.PathLike[str]

_MAX_COCO_ID = 182
_FIRST_STUFF_ID = 92  # COCO-Stuff ids 1..91 are things, 92..182 stuff.
_COCO_NAME_OF_ID = dict(zip(COCO_STUFF_IDS, COCO_STUFF_CLASSES, strict=True))

_LAYOUT_10K = """\
  <root>/images/<id>.jpg
  <root>/annotations/<id>.mat      MATLAB file, variable S: label map of COCO-Stuff ids
                                   (0 = unlabelled, 1..182)
  <root>/imageLists/train.txt      image ids, one per line, without extension
  <root>/imageLists/test.txt"""

_LAYOUT_164K = """\
  <root>/images/<split>/<name>.jpg               e.g. <split> = train2017, val2017
  <root>/stuffthingmaps/<split>/<name>.png       8-bit PNG of COCO-Stuff id - 1 (0..181),
                                                 255 = unlabelled"""


def _build_164k_lookup() -> tuple[np.ndarray, np.ndarray]:
    lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lookup[:_MAX_COCO_ID] = coco_id_to_train_id[1 : _MAX_COCO_ID + 1]
    valid = np.zeros(256, dtype=bool)
    valid[:_MAX_COCO_ID] = True
    valid[IGNORE_INDEX] = True
    return lookup, valid


# stuffthingmaps value -> train id, and which values may occur at all.
_PNG_TO_TRAIN_ID, _PNG_VALUE_IS_VALID = _build_164k_lookup()


class CocoStuff10k:
    """COCO-Stuff 10k (release v1.1; v1.0's MATLAB v7.3 files are read too).

    Expected layout::

        <root>/images/<id>.jpg
        <root>/annotations/<id>.mat      variable S: COCO-Stuff ids, 0 = unlabelled
        <root>/imageLists/{train,test}.txt

    Args:
        root: The dataset folder.
        split: ``"train"`` or ``"test"``: which image list to use.
        allow_outside_root: Read list entries that point outside ``root`` (``../x``, ``/x``);
            refused by default, since a list is data and should not choose what is read.

    Attributes:
        root: The dataset folder, absolute.
        split: The split.
        class_names: The 171 COCO-Stuff class names, in train-id order.
        image_ids: The image ids of the split's list, in list order.

    Raises:
        DatasetError: The split is unknown, a folder or the list is missing, the list is empty,
            or an entry points outside ``root`` without ``allow_outside_root``.
    """

    SPLITS: tuple[str, ...] = ("train", "test")
    class_names: tuple[str, ...] = COCO_STUFF_CLASSES

    def __init__(self, root: PathLike, split: str, *, allow_outside_root: bool = False) -> None:
        if split not in self.SPLITS:
            raise DatasetError(
                f"CocoStuff10k split must be one of {', '.join(self.SPLITS)}; got {split!r}"
            )
        self.root = Path(root).expanduser().resolve()
        self.split = split
        what = "COCO-Stuff 10k"
        _require_dir(self.root, f"{what} root", _LAYOUT_10K)
        for sub in ("images", "annotations", "imageLists"):
            _require_dir(self.root / sub, f"{what} folder", _LAYOUT_10K)
        list_path = self.root / "imageLists" / f"{split}.txt"
        if not list_path.is_file():
            raise DatasetError(f"{what} image list {list_path} not found; expected:\n{_LAYOUT_10K}")
        self.image_ids: tuple[str, ...] = tuple(
            line.strip() for line in list_path.read_text().splitlines() if line.strip()
        )
        if not self.image_ids:
            raise DatasetError(
                f"{what} image list {list_path} is empty; expected one image id per line"
            )
        self.allow_outside_root = bool(allow_outside_root)
        if not self.allow_outside_root:
            for image_id in self.image_ids:
                for sub in ("images", "annotations"):
                    _check_inside(self.root, self.root / sub, image_id, f"{list_path}: entry")

    @property
    def spec(self) -> dict[str, Any]:
        """``{"kind": "coco10k", "root": ..., "split": ...}``: rebuilds the same dataset."""
        spec = {"kind": "coco10k", "root": str(self.root), "split": self.split}
        return spec | ({"allow_outside_root": True} if self.allow_outside_root else {})

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image uint8 [H, W, 3], label uint8 [H, W])`` of image ``index``.

        Raises:
            DatasetError: A file is missing or unreadable, the ``.mat`` has no ``S``, ``S`` holds
                values other than 0..182, or its size differs from the image's.
        """
        image_id = self.image_ids[_check_index(index, len(self), type(self).__name__)]
        image_path = self.root / "images" / f"{image_id}.jpg"
        mat_path = self.root / "annotations" / f"{image_id}.mat"
        image = _read_rgb(image_path)
        label = _coco_ids_to_train_ids(_read_mat_label_map(mat_path), mat_path)
        _check_same_size(label, mat_path, image, image_path)
        return image, label

    def image_file(self, index: int) -> tuple[Path, str]:
        """``(folder, name)``: image ``index``'s file is ``folder / name``, ``name`` the
        dataset's own (POSIX) name of it. Exports name images this way."""
        image_id = self.image_ids[_check_index(index, len(self), type(self).__name__)]
        return self.root / "images", f"{image_id}.jpg"


class CocoStuff164k:
    """COCO-Stuff 164k: COCO 2017 images with the ``stuffthingmaps`` label PNGs.

    Expected layout::

        <root>/images/<split>/<name>.jpg
        <root>/stuffthingmaps/<split>/<name>.png     id - 1 (0..181), 255 = unlabelled

    ``split`` names the folder (``"train2017"``, ``"val2017"``, or any other folder present in
    both places). ``"train"`` and ``"val"`` are shorthands for ``"train2017"`` and ``"val2017"``
    when those folders exist, and are taken literally otherwise. ``spec`` records the folder
    actually used. Images are every ``*.jpg`` of the split's folder, sorted by name.

    Args:
        root: The dataset folder.
        split: The split folder name (or its shorthand, see above).

    Attributes:
        root: The dataset folder, absolute.
        split: The split folder used.
        class_names: The 171 COCO-Stuff class names, in train-id order.
        image_ids: Image file names without extension, sorted.

    Raises:
        DatasetError: A folder is missing, the split has no images, or some image has no label
            PNG.
    """

    class_names: tuple[str, ...] = COCO_STUFF_CLASSES

    def __init__(self, root: PathLike, split: str) -> None:
        self.root = Path(root).expanduser().resolve()
        what = "COCO-Stuff 164k"
        _require_dir(self.root, f"{what} root", _LAYOUT_164K)
        images_root = self.root / "images"
        maps_root = self.root / "stuffthingmaps"
        _require_dir(images_root, f"{what} folder", _LAYOUT_164K)
        _require_dir(maps_root, f"{what} folder", _LAYOUT_164K)
        if not isinstance(split, str) or split in ("", ".", "..") or "/" in split or "\\" in split:
            raise DatasetError(
                f"{what} split must be a folder name such as 'val2017'; got {split!r}"
            )
        if split in ("train", "val") and (images_root / f"{split}2017").is_dir():
            split = f"{split}2017"
        self.split = split
        self._image_dir = images_root / split
        self._map_dir = maps_root / split
        for folder in (self._image_dir, self._map_dir):
            if not folder.is_dir():
                found = sorted(p.name for p in folder.parent.iterdir() if p.is_dir())
                raise DatasetError(
                    f"{what} split folder {folder} not found (splits there: {found or 'none'}); "
                    f"expected:\n{_LAYOUT_164K}"
                )
        self.image_ids: tuple[str, ...] = tuple(
            sorted(p.stem for p in self._image_dir.iterdir() if p.suffix == ".jpg")
        )
        if not self.image_ids:
            raise DatasetError(f"{what} split folder {self._image_dir} holds no .jpg images")
        have_maps = {p.stem for p in self._map_dir.iterdir() if p.suffix == ".png"}
        missing = [i for i in self.image_ids if i not in have_maps]
        if missing:
            raise DatasetError(
                f"{len(missing)} of {len(self.image_ids)} images in {self._image_dir} have no "
                f"label PNG in {self._map_dir}, e.g. {self._map_dir / (missing[0] + '.png')}"
            )

    @property
    def spec(self) -> dict[str, Any]:
        """``{"kind": "coco164k", "root": ..., "split": ...}``: rebuilds the same dataset."""
        return {"kind": "coco164k", "root": str(self.root), "split": self.split}

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_file(self, index: int) -> tuple[Path, str]:
        """``(folder, name)``: image ``index``'s file is ``folder / name``, ``name`` the
        dataset's own (POSIX) name of it. Exports name images this way."""
        name = self.image_ids[_check_index(index, len(self), type(self).__name__)]
        return self._image_dir, f"{name}.jpg"

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image uint8 [H, W, 3], label uint8 [H, W])`` of image ``index``.

        Raises:
            DatasetError: A file is missing or unreadable, the PNG is not 8-bit single-channel,
                holds values other than 0..181 and 255, or its size differs from the image's.
        """
        name = self.image_ids[_check_index(index, len(self), type(self).__name__)]
        image_path = self._image_dir / f"{name}.jpg"
        png_path = self._map_dir / f"{name}.png"
        image = _read_rgb(image_path)
        values = _read_raw_png(png_path)
        bad = ~_PNG_VALUE_IS_VALID[values]
        if bad.any():
            raise DatasetError(
                f"label map {png_path} holds values {_few(values[bad])}; expected COCO-Stuff "
                f"id - 1 (0..{_MAX_COCO_ID - 1}) or 255 (unlabelled)"
            )
        label = _PNG_TO_TRAIN_ID[values]
        _check_same_size(label, png_path, image, image_path)
        return image, label


class CocoJson:
    """Images with COCO-format annotations (instances and/or stuff JSON), painted by pycocotools.

    Every annotation's mask comes from ``COCO.annToMask``: polygons, uncompressed RLE (crowds)
    and compressed RLE (COCO-Stuff) alike. Crowd annotations are painted as their class. Pixels
    that no annotation covers are 255.

    **Classes.** Category 183 ``"other"`` (COCO-Stuff's catch-all) is skipped: its pixels stay
    255. When every other category found is a COCO-Stuff id with its COCO name, the labels use
    the 171-class COCO-Stuff numbering (``class_names`` is ``COCO_STUFF_CLASSES``), whichever
    subset of categories the files hold. Otherwise the categories found are numbered 0..C-1 in
    increasing category id, ``class_names`` being their names (which must then be unique, at
    most 255 of them).

    **Paint order.** Stuff is painted first, then things over it; within each group larger masks
    first, so that a smaller annotation lying on a larger one (a ball held by a person) stays
    visible. Ties (overlapping masks of equal area in the same group) go by file order, then
    annotation order, the later on top; nothing else depends on the order of files or
    annotations. With COCO numbering, ids 92..182 are stuff; otherwise a category is stuff when
    it says ``"isthing": 0`` (the panoptic convention), and a thing otherwise.

    **Merging.** Several files (e.g. ``instances_val2017.json`` and ``stuff_val2017.json``) are
    merged by image id; an image listed in any file is included. Images are read from
    ``image_dir / file_name``.

    Args:
        image_dir: The folder the JSON ``file_name`` entries are relative to.
        annotation_files: One COCO-format JSON path, or several for the same images.
        allow_outside_root: Read ``file_name`` entries that point outside ``image_dir``
            (``../x``, ``/x``); refused by default, since the JSON is data and should not choose
            what is read.

    Attributes:
        image_dir: The image folder, absolute.
        annotation_files: The JSON files, absolute.
        class_names: Class names in train-id order (see **Classes**).
        image_ids: COCO image ids as strings, in increasing id order.

    Raises:
        DatasetError: A folder or file is missing or not COCO-format JSON, two files disagree
            about an image or a category, an annotation names an unknown category or image or
            holds a polygon that is not a list of at least three x, y pairs, no file lists any
            image, or a ``file_name`` points outside ``image_dir`` without ``allow_outside_root``.
    """

    def __init__(
        self,
        image_dir: PathLike,
        annotation_files: PathLike | Sequence[PathLike],
        *,
        allow_outside_root: bool = False,
    ) -> None:
        if isinstance(annotation_files, str | os.PathLike):
            annotation_files = [annotation_files]
        self.image_dir = Path(image_dir).expanduser().resolve()
        _require_dir(self.image_dir, "image folder", "  <image_dir>/<file_name of each image>")
        self.annotation_files = tuple(Path(f).expanduser().resolve() for f in annotation_files)
        if not self.annotation_files:
            raise DatasetError("CocoJson needs at least one COCO-format annotation file")
        self._cocos = tuple(_load_coco(path) for path in self.annotation_files)

        # image id -> (file_name, height, width, first file listing it)
        images: dict[int, tuple[str, int, int, Path]] = {}
        # category id -> (name, isthing, file)
        categories: dict[int, tuple[str, bool, Path]] = {}
        for path, coco in zip(self.annotation_files, self._cocos, strict=True):
            _merge_images(images, coco, path)
            _merge_categories(categories, coco, path)
        if not images:
            raise DatasetError(
                f"no images listed in {', '.join(map(str, self.annotation_files))}; "
                "expected a COCO-format 'images' list"
            )
        self.allow_outside_root = bool(allow_outside_root)
        if not self.allow_outside_root:
            for image_key, (file_name, _, _, path) in images.items():
                what = f"{path}: image {image_key} file_name"
                _check_inside(self.image_dir, self.image_dir, file_name, what)
        kept = {
            cat_id: value
            for cat_id, value in categories.items()
            if not (cat_id == COCO_OTHER_ID and value[0] == "other")
        }
        if all(_COCO_NAME_OF_ID.get(cat_id) == name for cat_id, (name, *_) in kept.items()):
            self.class_names: tuple[str, ...] = COCO_STUFF_CLASSES
            self._train_id = {cat_id: int(coco_id_to_train_id[cat_id]) for cat_id in kept}
            self._is_thing = {cat_id: cat_id < _FIRST_STUFF_ID for cat_id in kept}
        else:
            ordered = sorted(kept)
            names = [kept[cat_id][0] for cat_id in ordered]
            if len(set(names)) != len(names) or len(names) > IGNORE_INDEX:
                raise DatasetError(
                    f"categories of {', '.join(map(str, self.annotation_files))} are not COCO's, "
                    f"so they are numbered in id order; that needs unique names and at most "
                    f"{IGNORE_INDEX} categories, got {len(names)}: {names[:20]}"
                )
            self.class_names = tuple(names)
            self._train_id = {cat_id: train_id for train_id, cat_id in enumerate(ordered)}
            self._is_thing = {cat_id: kept[cat_id][1] for cat_id in ordered}

        for path, coco in zip(self.annotation_files, self._cocos, strict=True):
            for ann in coco.dataset.get("annotations", []):
                if ann.get("category_id") not in categories:
                    raise DatasetError(
                        f"{path}: annotation {ann.get('id')} has category_id "
                        f"{ann.get('category_id')!r}, which is not in the categories of "
                        f"{', '.join(map(str, self.annotation_files))}"
                    )
                if ann.get("image_id") not in coco.imgs:
                    raise DatasetError(
                        f"{path}: annotation {ann.get('id')} refers to image_id "
                        f"{ann.get('image_id')!r}, which that file does not list"
                    )
                _check_polygons(ann, path)

        self._image_keys = tuple(sorted(images))
        self._images = images
        self.image_ids: tuple[str, ...] = tuple(str(i) for i in self._image_keys)

    @property
    def spec(self) -> dict[str, Any]:
        """``{"kind": "coco-json", "image_dir": ..., "annotation_files": [...]}``."""
        spec = {
            "kind": "coco-json",
            "image_dir": str(self.image_dir),
            "annotation_files": [str(p) for p in self.annotation_files],
        }
        return spec | ({"allow_outside_root": True} if self.allow_outside_root else {})

    def __len__(self) -> int:
        return len(self._image_keys)

    def image_file(self, index: int) -> tuple[Path, str]:
        """``(folder, name)``: image ``index``'s file is ``folder / name``, ``name`` the
        dataset's own (POSIX) name of it. Exports name images this way."""
        image_key = self._image_keys[_check_index(index, len(self), type(self).__name__)]
        return self.image_dir, self._images[image_key][0]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image uint8 [H, W, 3], label uint8 [H, W])`` of image ``index``.

        Raises:
            DatasetError: The image is missing or unreadable, its size differs from the JSON's,
                or an annotation cannot be decoded into a mask of that size.
        """
        image_key = self._image_keys[_check_index(index, len(self), type(self).__name__)]
        file_name, height, width, json_path = self._images[image_key]
        image_path = self.image_dir / file_name
        image = _read_rgb(image_path)
        if image.shape[:2] != (height, width):
            raise DatasetError(
                f"image {image_path} is {image.shape[0]}x{image.shape[1]} (HxW) but {json_path} "
                f"gives image {image_key} as {height}x{width}"
            )
        return image, self._paint(image_key, height, width)

    @property
    def info(self) -> dict[str, Any]:
        """The first file's ``info`` object (empty if it has none)."""
        info = self._cocos[0].dataset.get("info")
        return info if isinstance(info, dict) else {}

    def label(self, index: int) -> np.ndarray:
        """The painted label uint8 ``[H, W]`` of image ``index``, without reading the image.

        Raises:
            DatasetError: an annotation cannot be decoded into a mask of the image's size.
        """
        image_key = self._image_keys[_check_index(index, len(self), type(self).__name__)]
        _, height, width, _ = self._images[image_key]
        return self._paint(image_key, height, width)

    def file_name(self, index: int) -> str:
        """The JSON's ``file_name`` of image ``index``."""
        return self._images[self._image_keys[_check_index(index, len(self), "CocoJson")]][0]

    def _paint(self, image_key: int, height: int, width: int) -> np.ndarray:
        # (is_thing, -area, file index, annotation index) orders painting; see the class docstring.
        layers: list[tuple[bool, int, int, int, int, np.ndarray]] = []
        for file_index, (path, coco) in enumerate(
            zip(self.annotation_files, self._cocos, strict=True)
        ):
            for ann_index, ann in enumerate(coco.loadAnns(coco.getAnnIds(imgIds=[image_key]))):
                category = ann["category_id"]
                if category not in self._train_id:
                    continue  # "other"
                try:
                    mask = coco.annToMask(ann).astype(bool)
                except Exception as err:  # pycocotools fails in many ways on malformed input
                    raise DatasetError(
                        f"{path}: cannot decode the segmentation of annotation {ann.get('id')}: "
                        f"{err!r}"
                    ) from err
                if mask.shape != (height, width):
                    raise DatasetError(
                        f"{path}: annotation {ann.get('id')} decodes to a {mask.shape[0]}x"
                        f"{mask.shape[1]} mask, but its image is {height}x{width}"
                    )
                area = int(np.count_nonzero(mask))
                layers.append(
                    (self._is_thing[category], -area, file_index, ann_index, category, mask)
                )
        label = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        for *_, category, mask in sorted(layers, key=lambda layer: layer[:4]):
            label[mask] = self._train_id[category]
        return label


def _check_inside(root: Path, folder: Path, relative: str, what: str) -> None:
    """Refuse a path from a dataset's own files that leads outside its (absolute) ``root``.

    ``relative`` is joined to ``folder`` as the reader joins it (an absolute one replaces
    ``folder``). Lexical, so a dataset whose folders are symbolic links elsewhere still reads.
    """
    joined = os.path.normpath(os.path.join(folder, relative))
    if os.path.commonpath([root, joined]) != str(root):
        raise DatasetError(
            f"{what} {relative!r} points outside {root}; refusing to read it. If the dataset "
            "really keeps its files there, pass allow_outside_root=True "
            "(misical prepare: --allow-outside-root)."
        )


def _check_polygons(ann: dict[str, Any], path: Path) -> None:
    """Refuse polygons pycocotools would drop silently (odd length, fewer than 3 points)."""
    segmentation = ann.get("segmentation")
    if not isinstance(segmentation, list):
        return  # RLE, checked when decoded
    # Lengths only: a million annotations must stay cheap to check, and pycocotools itself
    # rejects coordinates that are not numbers when the mask is decoded.
    for polygon in segmentation:
        if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0):
            raise DatasetError(
                f"{path}: annotation {ann.get('id')} has polygon {polygon!r:.80}; a polygon is "
                "a list of at least 3 x, y pairs (an even count of at least 6 numbers)"
            )


def _require_dir(path: Path, what: str, layout: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{what} {path} not found; expected:\n{layout}")


def _check_index(index: int, length: int, owner: str) -> int:
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise TypeError(f"{owner} index must be an integer, got {index!r}")
    i = int(index) + (length if index < 0 else 0)
    if not 0 <= i < length:
        raise IndexError(f"image index {index} out of range for {length} images")
    return i


def _few(values: np.ndarray, limit: int = 10) -> str:
    """The distinct values of ``values``, at most ``limit`` of them, for error messages."""
    distinct = np.unique(values)
    shown = ", ".join(str(v) for v in distinct[:limit].tolist())
    return f"{{{shown}{', ...' if distinct.size > limit else ''}}}"


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise DatasetError(f"image {path} not found")
    try:
        with Image.open(path) as im:
            # COCO has grayscale (and a few CMYK) JPEGs; every dataset yields RGB.
            return np.array(im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err


def _read_as_stored(path: Path, what: str) -> tuple[np.ndarray, str]:
    """The pixels of a label image exactly as stored, and its PIL mode."""
    from PIL import Image

    if not path.is_file():
        raise DatasetError(f"{what} {path} not found")
    try:
        with Image.open(path) as im:
            # Raw indices: .convert() would map a palette PNG's indices to colours.
            return np.array(im), im.mode
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {what} {path}: {err}") from err


def _read_raw_png(path: Path) -> np.ndarray:
    values, mode = _read_as_stored(path, "label map")
    if values.ndim != 2 or values.dtype != np.uint8:
        raise DatasetError(
            f"label map {path} is a {mode!r} image; expected an 8-bit single-channel (L or P) PNG"
        )
    return values


def _read_mat_label_map(path: Path) -> np.ndarray:
    """Variable ``S`` of a COCO-Stuff 10k ``.mat`` file, as stored (any dtype)."""
    import scipy.io

    if not path.is_file():
        raise DatasetError(f"label file {path} not found; expected a .mat file with variable S")
    try:
        contents = scipy.io.loadmat(path, variable_names=["S"])
    except NotImplementedError:
        # scipy's answer to MATLAB v7.3 (HDF5) files, the format of COCO-Stuff 10k v1.0.
        return _read_mat_v73_label_map(path)
    except Exception as err:  # scipy fails in many ways on a corrupt file
        raise DatasetError(f"cannot read {path} as a MATLAB .mat file: {err!r}") from err
    if "S" not in contents:
        found = sorted(name for name, *_ in scipy.io.whosmat(path))
        raise DatasetError(
            f"{path} has no variable 'S' (the COCO-Stuff 10k label map); it holds {found}"
        )
    return contents["S"]


def _read_mat_v73_label_map(path: Path) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            data = f.get("S")
            if not isinstance(data, h5py.Dataset):
                raise DatasetError(
                    f"{path} (MATLAB v7.3) has no array 'S' (the COCO-Stuff 10k label map); "
                    f"it holds {sorted(f.keys())}"
                )
            stored = data[()]
    except OSError as err:
        raise DatasetError(f"cannot read {path} as a MATLAB v7.3 (HDF5) file: {err}") from err
    # MATLAB writes column-major, so HDF5 holds the W x H transpose of the H x W map; the size
    # check against the image catches a file written otherwise.
    return np.asarray(stored).T


def _coco_ids_to_train_ids(ids: np.ndarray, path: Path) -> np.ndarray:
    """Map a label map of COCO-Stuff ids (0..182, 0 = unlabelled) to train ids, validating it."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype.kind not in "uif":
        raise DatasetError(
            f"{path}: S is {ids.dtype} of shape {ids.shape}; expected a 2-D numeric label map"
        )
    if ids.dtype.kind == "f":
        integral = np.isfinite(ids) & (ids == np.round(ids))
        if not integral.all():
            raise DatasetError(f"{path}: S holds non-integer values {_few(ids[~integral])}")
    # Wide ints, so that nothing wraps: in uint8, 256 + 1 would pass as id 1 (person).
    wide = ids.astype(np.int64)
    bad = (wide < 0) | (wide > _MAX_COCO_ID)
    if bad.any():
        raise DatasetError(
            f"{path}: S holds values {_few(wide[bad])}; expected COCO-Stuff ids 0..{_MAX_COCO_ID}"
            " (0 = unlabelled)"
        )
    return coco_id_to_train_id[wide]


def _check_same_size(
    label: np.ndarray, label_path: Path, image: np.ndarray, image_path: Path
) -> None:
    if label.shape != image.shape[:2]:
        raise DatasetError(
            f"label map {label_path} is {label.shape[0]}x{label.shape[1]} (HxW) but its image "
            f"{image_path} is {image.shape[0]}x{image.shape[1]}"
        )


def _load_coco(path: Path) -> COCO:
    from pycocotools.coco import COCO

    if not path.is_file():
        raise DatasetError(
            f"annotation file {path} not found; expected COCO-format JSON "
            "(images, annotations, categories)"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            return COCO(str(path))
    except Exception as err:  # json, assertions, missing keys: all mean "not COCO JSON"
        raise DatasetError(
            f"cannot read {path} as COCO-format JSON (images, annotations, categories): {err!r}"
        ) from err


def _merge_images(images: dict[int, tuple[str, int, int, Path]], coco: COCO, path: Path) -> None:
    for entry in coco.dataset.get("images", []):
        try:
            key = entry["id"]
            value = (str(entry["file_name"]), int(entry["height"]), int(entry["width"]), path)
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(
                f"{path}: image entry {entry!r} lacks a valid {err}; expected id, file_name, "
                "height and width"
            ) from err
        known = images.setdefault(key, value)
        if known[:3] != value[:3]:
            raise DatasetError(
                f"image {key} is {known[:3]} (file_name, height, width) in {known[3]} but "
                f"{value[:3]} in {path}"
            )


def _merge_categories(
    categories: dict[int, tuple[str, bool, Path]], coco: COCO, path: Path
) -> None:
    for entry in coco.dataset.get("categories", []):
        try:
            value = (str(entry["name"]), entry.get("isthing", 1) != 0, path)
            known = categories.setdefault(entry["id"], value)
        except (AttributeError, KeyError, TypeError) as err:
            raise DatasetError(
                f"{path}: category entry {entry!r} lacks {err}; expected id and name"
            ) from err
        if known[0] != value[0]:
            raise DatasetError(
                f"category {entry['id']} is {known[0]!r} in {known[2]} but {value[0]!r} in {path}"
            )
