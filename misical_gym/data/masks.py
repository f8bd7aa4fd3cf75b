"""Any folder of images and label masks: :class:`MaskFolder` and its classes file.

Images and labels are matched by file stem, or listed pair by pair in list files. Labels are
index masks (greyscale or palette PNGs, read raw: converting a palette PNG would turn its
indices into colours) or RGB colour-coded masks; an alpha channel is ignored. A classes file
(:func:`read_mask_classes`) names the classes and says which value or colour each one has.

Listed paths resolve against the dataset root. An absolute path that does not exist here is
looked up by its trailing components under the root, so SegNet's CamVid lists, written for a
``/SegNet/CamVid/...`` prefix, work wherever the folder lies. A listed path that resolves
outside the root (``..``, an absolute path elsewhere, a symbolic link) is refused: a list file
is input, and must not make the reader open arbitrary files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.data.classes import IGNORE_INDEX
from misical_gym.data.coco import (
    _check_index,
    _check_same_size,
    _read_as_stored,
    _read_rgb,
    _require_dir,
)
from misical_gym.errors import DatasetError

PathLike = str | os.PathLike[str]

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
"""Image file suffixes :class:`MaskFolder` looks for by default (case-insensitive)."""

_CLASSES_KEYS = ("names", "values", "colors", "ignore")
_LAYOUT = """\
  <images>/<stem>.<jpg|png|...>     RGB, RGBA or greyscale image
  <labels>/<stem>.png               index mask (greyscale or palette) or RGB colour-coded mask
or list files of "image [label]" lines, paths relative to the dataset root"""

Color = tuple[int, int, int]


@dataclass(frozen=True)
class MaskClasses:
    """The class table of a mask dataset.

    Train id ``i`` is ``names[i]``; in index masks it is written as ``values[i]``, in colour
    masks as ``colors[i]``. Pixels of an ``ignore_values`` value or an ``ignore_colors`` colour
    become 255 (ignore).
    """

    names: tuple[str, ...]
    values: tuple[int, ...]
    colors: tuple[Color, ...] | None = None
    ignore_values: tuple[int, ...] = ()
    ignore_colors: tuple[Color, ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "classes") -> MaskClasses:
        """Validate a ``{"names", "values", "colors", "ignore"}`` mapping (as in a YAML file).

        ``ignore`` entries are values (integers) or colours (``[R, G, B]``); ``ignore_values``
        and ``ignore_colors`` (the keys :meth:`to_dict` writes) are accepted too.

        Raises:
            DatasetError: A key is unknown or missing, or an entry is malformed or repeated.
        """
        if not isinstance(data, Mapping):
            raise DatasetError(f"{source}: expected a mapping with 'names'; got {data!r}")
        known = (*_CLASSES_KEYS, "ignore_values", "ignore_colors")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise DatasetError(f"{source}: unknown key(s) {unknown}; known: {', '.join(known)}")
        names = data.get("names")
        if (
            not isinstance(names, list | tuple)
            or not names
            or not all(isinstance(n, str) and n.strip() for n in names)
        ):
            raise DatasetError(f"{source}: 'names' must be a non-empty list of class names")
        names = tuple(n.strip() for n in names)
        _require_unique(names, "names", source)
        if len(names) > IGNORE_INDEX:
            raise DatasetError(f"{source}: at most {IGNORE_INDEX} classes; got {len(names)}")
        values = data.get("values")
        values = tuple(range(len(names))) if values is None else _values(values, "values", source)
        colors = data.get("colors")
        if colors is not None:
            if not isinstance(colors, list | tuple):
                raise DatasetError(f"{source}: 'colors' must be a list of [R, G, B]")
            colors = tuple(_color(c, "colors", source) for c in colors)
            _require_unique(colors, "colors", source)
        for key, entries in (("values", values), ("colors", colors)):
            if entries is not None and len(entries) != len(names):
                raise DatasetError(
                    f"{source}: {len(entries)} {key} for {len(names)} names; give one per name"
                )
        ignore = _entries(data, "ignore", source)
        ignore_values = [e for e in ignore if not isinstance(e, list | tuple)]
        ignore_colors = [e for e in ignore if isinstance(e, list | tuple)]
        ignore_values += _entries(data, "ignore_values", source)
        ignore_colors += _entries(data, "ignore_colors", source)
        table = cls(
            names=names,
            values=values,
            colors=colors,
            ignore_values=_values(ignore_values, "ignore", source),
            ignore_colors=tuple(_color(c, "ignore", source) for c in ignore_colors),
        )
        overlaps: tuple[tuple[str, Sequence[Any], Sequence[Any]], ...] = (
            ("value", table.values, table.ignore_values),
            ("colour", table.colors or (), table.ignore_colors),
        )
        for key, named, ignored in overlaps:
            both = sorted(set(named) & set(ignored))
            if both:
                raise DatasetError(f"{source}: {key}(s) {both} are both a class and ignored")
        return table

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict that :meth:`from_mapping` reads back to this table."""
        return {
            "names": list(self.names),
            "values": list(self.values),
            "colors": None if self.colors is None else [list(c) for c in self.colors],
            "ignore_values": list(self.ignore_values),
            "ignore_colors": [list(c) for c in self.ignore_colors],
        }


def read_mask_classes(path: PathLike) -> MaskClasses:
    """Read a classes file.

    - ``.json``, ``.yaml`` or ``.yml``: a mapping with ``names`` (required; train ids follow
      their order), ``values`` (each name's value in index masks; default 0..C-1), ``colors``
      (each name's ``[R, G, B]`` in colour masks) and ``ignore`` (values, or ``[R, G, B]``
      colours, that mean unlabelled).
    - Anything else is plain text: one class name a line, the i-th name (counting names only)
      having value i. Blank lines and ``#`` comments are skipped.

    Raises:
        DatasetError: The file is missing, does not parse, or its table is invalid.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"classes file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read classes file {path}: {err}") from err
    suffix = path.suffix.lower()
    if suffix in (".json", ".yaml", ".yml"):
        import yaml

        try:
            data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise DatasetError(f"cannot parse classes file {path}: {err}") from err
        return MaskClasses.from_mapping(data, str(path))
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return MaskClasses.from_mapping({"names": [n for n in names if n]}, str(path))


class MaskFolder:
    """Images with label masks, from a pair of folders or from list files.

    Without ``lists``, every image in ``images`` (suffixes ``image_suffixes``, sorted by name)
    is paired with ``labels/<stem><label_suffix>``. With ``lists``, each line of each list file
    names an image and optionally its label (``image [label]``); a line with an image only takes
    its label from ``labels`` by stem. Label values or colours that ``classes`` does not name are
    an error (:meth:`__getitem__`), or ignore with ``unknown_as_ignore``.

    Args:
        classes: The class table, or the path of a classes file (:func:`read_mask_classes`).
        images: The image folder (needed without ``lists``).
        labels: The label folder (needed without ``lists``, or for list lines without labels).
        root: The dataset root that listed paths resolve against; default the common parent
            of ``images`` and ``labels`` (or the folder of the first list file).
        lists: List files; their lines, in order, make the dataset.
        image_suffixes: Image suffixes looked for in ``images``.
        label_suffix: The suffix of label files.
        unknown_as_ignore: Map values and colours the table does not name to 255 instead of
            raising.

    Attributes:
        root: The dataset root, absolute.
        classes: The class table.
        class_names: Class names in train-id order.
        image_ids: Image paths relative to the root, without suffix.

    Raises:
        DatasetError: A folder, list or listed file is missing, a listed path lies outside the
            root, an image has no label, two images share a stem, or nothing is found.
    """

    def __init__(
        self,
        classes: MaskClasses | Mapping[str, Any] | PathLike,
        images: PathLike | None = None,
        labels: PathLike | None = None,
        *,
        root: PathLike | None = None,
        lists: Sequence[PathLike] | None = None,
        image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
        label_suffix: str = ".png",
        unknown_as_ignore: bool = False,
    ) -> None:
        if isinstance(classes, MaskClasses):
            self.classes = classes
        elif isinstance(classes, Mapping):
            self.classes = MaskClasses.from_mapping(classes)
        else:
            self.classes = read_mask_classes(classes)
        self.class_names: tuple[str, ...] = self.classes.names
        self.images = None if images is None else Path(images).expanduser().resolve()
        self.labels = None if labels is None else Path(labels).expanduser().resolve()
        self.lists = None if lists is None else tuple(Path(f).expanduser().resolve() for f in lists)
        self.image_suffixes = tuple(s.lower() for s in image_suffixes)
        self.label_suffix = label_suffix
        self.unknown_as_ignore = bool(unknown_as_ignore)
        for folder in (self.images, self.labels):
            if folder is not None:
                _require_dir(folder, "folder", _LAYOUT)
        if root is not None:
            self.root = Path(root).expanduser().resolve()
        elif self.images is not None and self.labels is not None:
            self.root = Path(os.path.commonpath([self.images, self.labels]))
        elif self.lists:
            self.root = self.lists[0].parent
        else:
            raise DatasetError("MaskFolder needs an image and a label folder, or list files")
        _require_dir(self.root, "dataset root", _LAYOUT)
        if self.lists is not None:
            pairs = [pair for path in self.lists for pair in self._read_list(path)]
        else:
            pairs = self._scan_folders()
        if not pairs:
            where = self.lists if self.lists is not None else self.images
            raise DatasetError(f"no images found in {where}; expected:\n{_LAYOUT}")
        self._pairs = tuple(pairs)
        self.image_ids: tuple[str, ...] = tuple(
            image.relative_to(self.root).with_suffix("").as_posix()
            if image.is_relative_to(self.root)
            else image.stem
            for image, _ in pairs
        )

    @property
    def spec(self) -> dict[str, Any]:
        """``{"kind": "masks", ...}``: the constructor's arguments, with the parsed classes."""
        return {
            "kind": "masks",
            "classes": self.classes.to_dict(),
            "images": None if self.images is None else str(self.images),
            "labels": None if self.labels is None else str(self.labels),
            "root": str(self.root),
            "lists": None if self.lists is None else [str(p) for p in self.lists],
            "image_suffixes": list(self.image_suffixes),
            "label_suffix": self.label_suffix,
            "unknown_as_ignore": self.unknown_as_ignore,
        }

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image uint8 [H, W, 3], label uint8 [H, W])`` of image ``index``.

        Raises:
            DatasetError: A file is missing or unreadable, the label is neither an index nor an
                RGB mask, holds values or colours the classes do not name (unless
                ``unknown_as_ignore``), or its size differs from the image's.
        """
        image_path, label_path = self._pairs[_check_index(index, len(self), type(self).__name__)]
        image = _read_rgb(image_path)
        label = self._to_train_ids(read_mask(label_path), label_path)
        _check_same_size(label, label_path, image, image_path)
        return image, label

    def image_file(self, index: int) -> tuple[Path, str]:
        """``(folder, name)``: image ``index``'s file is ``folder / name``, ``name`` the
        dataset's own (POSIX) name of it. Exports name images this way."""
        image = self._pairs[_check_index(index, len(self), type(self).__name__)][0]
        if image.is_relative_to(self.root):
            return self.root, image.relative_to(self.root).as_posix()
        return image.parent, image.name

    # ------------------------------------------------------------------ pairing
    def _scan_folders(self) -> list[tuple[Path, Path]]:
        if self.images is None or self.labels is None:
            raise DatasetError("without list files, MaskFolder needs both images and labels")
        by_stem: dict[str, Path] = {}
        for path in sorted(self.images.iterdir()):
            if path.is_file() and path.suffix.lower() in self.image_suffixes:
                if path.stem in by_stem:
                    raise DatasetError(
                        f"images {by_stem[path.stem]} and {path} share the stem {path.stem!r}; "
                        "labels are matched by stem, so keep one"
                    )
                by_stem[path.stem] = path
        pairs = [
            (path, self.labels / f"{stem}{self.label_suffix}") for stem, path in by_stem.items()
        ]
        missing = [label for _, label in pairs if not label.is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} of {len(pairs)} images in {self.images} have no label "
                f"{self.label_suffix} in {self.labels}, e.g. {missing[0]}"
            )
        return pairs

    def _read_list(self, path: Path) -> list[tuple[Path, Path]]:
        if not path.is_file():
            raise DatasetError(f"list file {path} not found")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"cannot read list file {path}: {err}") from err
        pairs = []
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"{path}:{number}"
            if len(fields) > 2:
                raise DatasetError(
                    f"{where}: expected 'image [label]', got {len(fields)} fields: {line.strip()!r}"
                )
            image = self._resolve_listed(fields[0], where)
            if len(fields) == 2:
                label = self._resolve_listed(fields[1], where)
            elif self.labels is not None:
                label = self.labels / f"{image.stem}{self.label_suffix}"
                if not label.is_file():
                    raise DatasetError(
                        f"{where}: image {image} has no label {self.label_suffix} in {self.labels}"
                    )
            else:
                raise DatasetError(
                    f"{where}: names an image but no label, and no label folder was given"
                )
            pairs.append((image, label))
        return pairs

    def _resolve_listed(self, text: str, where: str) -> Path:
        """The file a list line names, inside the root (see the module docstring)."""
        listed = Path(text)
        if listed.is_absolute() and not listed.exists():
            parts = listed.parts[1:]
            # Longest tail first: the most specific match wins.
            tails = (self.root.joinpath(*parts[k:]) for k in range(len(parts)))
            candidate = next((tail for tail in tails if tail.exists()), None)
            if candidate is None:
                raise DatasetError(
                    f"{where}: listed file {text} not found, nor any trailing part of it "
                    f"under the dataset root {self.root}"
                )
        else:
            candidate = self.root / listed
        resolved = candidate.resolve()
        if not resolved.is_relative_to(self.root):
            raise DatasetError(
                f"{where}: listed file {text} resolves to {resolved}, outside the dataset root "
                f"{self.root}; list files may only name files under the root"
            )
        if not resolved.is_file():
            raise DatasetError(f"{where}: listed file {text} not found (looked at {resolved})")
        return resolved

    # ------------------------------------------------------------------ labels
    def _to_train_ids(self, mask: np.ndarray, path: Path) -> np.ndarray:
        return mask_to_train_ids(mask, path, self.classes, self.unknown_as_ignore)


def mask_to_train_ids(
    mask: np.ndarray, path: Path, table: MaskClasses, unknown_as_ignore: bool = False
) -> np.ndarray:
    """A mask as stored (:func:`read_mask`) mapped to train ids through the class table.

    Raises:
        DatasetError: an RGB mask without colours in the table, or a value or colour the table
            does not name (unless ``unknown_as_ignore``).
    """
    if mask.ndim == 2:
        # uint8 indices: a 256-entry lookup, far cheaper than np.unique per image.
        pixels = np.bincount(mask.ravel(), minlength=256)
        codes, keys = np.flatnonzero(pixels), mask
        pixels = pixels[codes]
        show: Callable[[int], str] = str
        known, ignored = table.values, table.ignore_values
    else:
        if table.colors is None:
            raise DatasetError(
                f"label mask {path} is an RGB image, but the classes file gives no 'colors'; "
                "add each class's [R, G, B], or save index masks (greyscale or palette)"
            )
        codes, keys, pixels = np.unique(_color_codes(mask), return_inverse=True, return_counts=True)
        known = tuple(_code(c) for c in table.colors)
        ignored = tuple(_code(c) for c in table.ignore_colors)
        show = _show_color
    train_id_of = dict.fromkeys(ignored, IGNORE_INDEX) | {key: i for i, key in enumerate(known)}
    unknown = [(int(c), int(n)) for c, n in zip(codes, pixels, strict=True) if c not in train_id_of]
    if unknown and not unknown_as_ignore:
        listed = ", ".join(f"{show(c)} ({n} px)" for c, n in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise DatasetError(
            f"label mask {path} holds {'colours' if mask.ndim == 3 else 'values'} that the "
            f"classes file does not name: {listed}{more}; name them (as classes or 'ignore'),"
            " or treat them as ignore (--unknown-as-ignore)"
        )
    if mask.ndim == 2:
        lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lookup[list(train_id_of)] = list(train_id_of.values())
        return lookup[mask]
    lookup = np.array([train_id_of.get(int(c), IGNORE_INDEX) for c in codes], dtype=np.uint8)
    return lookup[keys.reshape(mask.shape[:2])]


def read_mask(path: Path) -> np.ndarray:
    """A label mask as stored: ``[H, W]`` uint8 indices, or ``[H, W, 3]`` uint8 colours."""
    values, mode = _read_as_stored(path, "label mask")
    channels = {"L": None, "P": None, "LA": 0, "PA": 0, "RGB": slice(3), "RGBA": slice(3)}
    if mode not in channels or values.dtype != np.uint8:
        raise DatasetError(
            f"label mask {path} is a {mode!r} image; expected an 8-bit index mask (L or P) or an "
            "RGB colour mask (an alpha channel is ignored)"
        )
    keep = channels[mode]
    return values if keep is None else values[..., keep]


def _color_codes(mask: np.ndarray) -> np.ndarray:
    rgb = mask.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _code(color: Color) -> int:
    return (color[0] << 16) | (color[1] << 8) | color[2]


def _show_color(code: int) -> str:
    return str([code >> 16, (code >> 8) & 255, code & 255])


def _entries(data: Mapping[str, Any], key: str, source: str) -> list[Any]:
    entries = data.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list | tuple):
        raise DatasetError(f"{source}: '{key}' must be a list; got {entries!r}")
    return list(entries)


def _values(entries: Any, key: str, source: str) -> tuple[int, ...]:
    if not isinstance(entries, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in entries
    ):
        raise DatasetError(f"{source}: '{key}' must be a list of integers 0..255; got {entries!r}")
    _require_unique(entries, key, source)
    return tuple(entries)


def _color(entry: Any, key: str, source: str) -> Color:
    if (
        not isinstance(entry, list | tuple)
        or len(entry) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in entry)
    ):
        raise DatasetError(f"{source}: each of '{key}' must be [R, G, B] in 0..255; got {entry!r}")
    return (entry[0], entry[1], entry[2])


def _require_unique(entries: Sequence[Any], key: str, source: str) -> None:
    repeated = sorted({e for e in entries if entries.count(e) > 1})
    if repeated:
        raise DatasetError(f"{source}: '{key}' repeats {repeated}")
