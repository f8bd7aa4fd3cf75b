"""The feature store: per-patch features and oracle counts, on disk, memory-mapped.

A store is a directory::

    manifest.json     schema version, dataset, class names, grid, feature names, checksums
    features.npy      float32 [N, F]  the frozen segmenter's features (observations)
    counts.npy        int32   [N, C]  oracle pixel count of every class (rewards, never observed)
    patches.npy       int32   [N, 4]  image index, grid row, grid col, split code
    image_sizes.npy   int32   [I, 2]  height and width of every image
    segmenter.pt      optional        the frozen segmenter's checkpoint

Arrays are opened with ``numpy.load(mmap_mode="r")``, so opening a store costs almost no memory.
Opening checks the schema version, shapes and CRC-32 checksums. Writing goes to a temporary
directory that is renamed into place at the end, so a killed writer leaves no store that opens.
This module imports NumPy only: the environments read stores without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.atomic import atomic_directory
from misical_gym.data.patches import PatchGrid
from misical_gym.errors import StoreError
from misical_gym.layout import FeatureLayout

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SPLITS: tuple[str, ...] = ("init", "pool", "test")
"""Split names; ``patches[:, 3]`` holds the index of a patch's split in this tuple."""
_ARRAYS: dict[str, tuple[str, str]] = {
    # name: (dtype, shape description for messages)
    "features": ("float32", "[N, F]"),
    "counts": ("int32", "[N, C]"),
    "patches": ("int32", "[N, 4]"),
    "image_sizes": ("int32", "[I, 2]"),
}
_CHUNK = 16 << 20
_verified: dict[tuple[str, int, int], int] = {}


def file_crc32(path: Path) -> int:
    """CRC-32 of a file, read in chunks (never mapped, so resident memory does not grow)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _verify_checksum(path: Path, expected: int) -> None:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if _verified.get(key) == expected:
        return
    actual = file_crc32(path)
    if actual != expected:
        raise StoreError(
            f"{path}: checksum mismatch (crc32 {actual:08x}, manifest says {expected:08x}); "
            "the file is corrupt or was changed after the store was written. "
            "Prepare the store again."
        )
    _verified[key] = expected


class FeatureStore:
    """A prepared, read-only feature store. Create with :meth:`open` or :meth:`write`."""

    def __init__(self, path: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.path = path
        self.manifest = manifest
        self.features: np.ndarray = arrays["features"]
        self.counts: np.ndarray = arrays["counts"]
        self.patches: np.ndarray = arrays["patches"]
        self.image_sizes: np.ndarray = arrays["image_sizes"]
        self.class_names: tuple[str, ...] = tuple(manifest["class_names"])
        self.feature_names: tuple[str, ...] = tuple(manifest["feature_names"])
        self.image_ids: tuple[str, ...] = tuple(manifest["image_ids"])
        self.grid = PatchGrid(*manifest["grid"])

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True) -> FeatureStore:
        """Open the store at ``path``, checking its version, shapes and (if ``verify``) checksums.

        Raises:
            StoreError: the directory is missing, is not a store, or does not match its manifest.
        """
        path = Path(path).expanduser()
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            what = "does not exist" if not path.exists() else f"has no {MANIFEST}"
            raise StoreError(
                f"no feature store at {path}: the directory {what}. "
                "Create one with `misical prepare ...` (see `misical prepare --help`)."
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{manifest_path}: not valid JSON ({exc})") from exc
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{manifest_path}: store schema version {version!r}, this package reads "
                f"version {SCHEMA_VERSION}. Prepare the store again with this version."
            )
        arrays = {}
        for name, (dtype, _) in _ARRAYS.items():
            meta = manifest["arrays"][name]
            file = path / meta["file"]
            if not file.is_file():
                raise StoreError(f"{file}: missing from the store (the manifest lists it)")
            expected_size = _npy_data_size(meta)
            try:
                array = np.load(file, mmap_mode="r")
            except ValueError as exc:
                raise StoreError(f"{file}: unreadable or truncated array ({exc})") from exc
            if array.shape != tuple(meta["shape"]) or array.dtype != np.dtype(dtype):
                raise StoreError(
                    f"{file}: shape {array.shape} {array.dtype}, manifest says "
                    f"{tuple(meta['shape'])} {dtype}"
                )
            if array.nbytes != expected_size:
                raise StoreError(f"{file}: truncated ({array.nbytes} of {expected_size} bytes)")
            if verify:
                _verify_checksum(file, meta["crc32"])
            arrays[name] = array
        for name, meta in manifest.get("files", {}).items():
            file = path / name
            if not file.is_file():
                raise StoreError(f"{file}: missing from the store (the manifest lists it)")
            if verify:
                _verify_checksum(file, meta["crc32"])
        store = cls(path, manifest, arrays)
        store._check_consistency()
        return store

    def _check_consistency(self) -> None:
        n, c = self.num_patches, self.num_classes
        expect = {
            "features": (n, len(self.feature_names)),
            "counts": (n, c),
            "patches": (n, 4),
            "image_sizes": (len(self.image_ids), 2),
        }
        for name, shape in expect.items():
            actual = getattr(self, name).shape
            if actual != shape:
                raise StoreError(f"{self.path / (name + '.npy')}: shape {actual}, expected {shape}")
        if self.feature_names != self.layout.names:
            raise StoreError(f"{self.path / MANIFEST}: feature_names do not follow the schema")

    # ------------------------------------------------------------------ writing
    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        *,
        features: np.ndarray,
        counts: np.ndarray,
        patches: np.ndarray,
        image_sizes: np.ndarray,
        image_ids: Sequence[str],
        class_names: Sequence[str],
        grid: PatchGrid,
        dataset: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        segmenter: Mapping[str, Any] | None = None,
        files: Mapping[str, str | os.PathLike[str]] | None = None,
        overwrite: bool = False,
    ) -> FeatureStore:
        """Validate the arrays and write a store atomically; return it opened.

        Args:
            path: Directory to create.
            features: ``[N, 3 + 2C]`` finite features in :class:`FeatureLayout` order.
            counts: ``[N, C]`` non-negative oracle pixel counts.
            patches: ``[N, 4]`` image index, grid row, grid col, split code (index in SPLITS).
            image_sizes: ``[I, 2]`` image heights and widths.
            image_ids: ``I`` image ids.
            class_names: ``C`` unique class names.
            grid: The patch grid.
            dataset: How to reach the images again (``{"kind": ..., ...}``), JSON-serialisable.
            config: The settings that produced the store, for reproducibility.
            segmenter: Segmenter metadata, e.g. ``{"checkpoint": "segmenter.pt", "test_iou": []}``.
            files: Extra files to copy into the store, by name (e.g. the segmenter checkpoint).
            overwrite: Replace an existing store at ``path``.

        Raises:
            StoreError: an array has the wrong shape or dtype, or features are NaN or infinite.
        """
        path = Path(path).expanduser()
        class_names = tuple(str(c) for c in class_names)
        if len(set(class_names)) != len(class_names):
            raise StoreError("class_names must be unique")
        c = len(class_names)
        feature_names = FeatureLayout.of(class_names).names
        arrays = {
            "features": np.asarray(features),
            "counts": np.asarray(counts),
            "patches": np.asarray(patches),
            "image_sizes": np.asarray(image_sizes),
        }
        n = arrays["features"].shape[0] if arrays["features"].ndim == 2 else -1
        expect = {
            "features": (n, len(feature_names)),
            "counts": (n, c),
            "patches": (n, 4),
            "image_sizes": (len(image_ids), 2),
        }
        for name, shape in expect.items():
            if arrays[name].shape != shape:
                raise StoreError(f"{name}: shape {arrays[name].shape}, expected {shape}")
        if n < 1:
            raise StoreError("a store needs at least one patch")
        if not np.isfinite(arrays["features"]).all():
            bad = np.argwhere(~np.isfinite(arrays["features"]))[0]
            raise StoreError(
                f"features hold NaN or infinite values (first at patch {bad[0]}, "
                f"column {feature_names[bad[1]]!r}); refusing to write {path}"
            )
        if (arrays["counts"] < 0).any():
            raise StoreError("counts must be non-negative")
        p = arrays["patches"]
        if (
            (p[:, 0] < 0).any()
            or (p[:, 0] >= len(image_ids)).any()
            or (p[:, 1] < 0).any()
            or (p[:, 1] >= grid.rows).any()
            or (p[:, 2] < 0).any()
            or (p[:, 2] >= grid.cols).any()
            or (p[:, 3] < 0).any()
            or (p[:, 3] >= len(SPLITS)).any()
        ):
            raise StoreError("patches hold an image index, grid cell or split code out of range")
        # Per split, how many patches hold each class: inspect and target draws read this
        # instead of scanning the counts.
        present = arrays["counts"] > 0
        class_patches = {
            split: present[p[:, 3] == code].sum(axis=0).tolist()
            for code, split in enumerate(SPLITS)
        }
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "name": path.name,
            "dataset": dict(dataset),
            "class_names": list(class_names),
            "grid": [grid.rows, grid.cols],
            "feature_names": list(feature_names),
            "num_patches": n,
            "image_ids": [str(i) for i in image_ids],
            "class_patches": class_patches,
            "segmenter": dict(segmenter) if segmenter else None,
            "config": dict(config or {}),
            "arrays": {},
            "files": {},
        }
        with atomic_directory(path, overwrite=overwrite) as tmp:
            for name, (dtype, _) in _ARRAYS.items():
                file = tmp / f"{name}.npy"
                data = np.ascontiguousarray(arrays[name], dtype=dtype)
                np.save(file, data)
                manifest["arrays"][name] = {
                    "file": file.name,
                    "dtype": dtype,
                    "shape": list(data.shape),
                    "crc32": file_crc32(file),
                }
            for name, src in (files or {}).items():
                shutil.copyfile(src, tmp / name)
                manifest["files"][name] = {"crc32": file_crc32(tmp / name)}
            # The manifest goes last: a directory without one is never opened as a store.
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        return cls.open(path)

    # ------------------------------------------------------------------ views
    @property
    def num_patches(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the manifest, which holds every array's checksum: two stores with the
        same fingerprint hold the same data."""
        return hashlib.sha256((self.path / MANIFEST).read_bytes()).hexdigest()[:16]

    @cached_property
    def layout(self) -> FeatureLayout:
        """Where each feature column is."""
        return FeatureLayout.of(self.class_names)

    @property
    def dataset(self) -> dict[str, Any]:
        """How the store's images can be reached again (``{"kind": ..., ...}``)."""
        return self.manifest["dataset"]

    @property
    def rare_classes(self) -> tuple[int, ...]:
        """Designed rare class ids, when the dataset has them (synthetic), else empty."""
        return tuple(self.dataset.get("rare_classes", ()))

    @property
    def segmenter_checkpoint(self) -> Path | None:
        """Path of the frozen segmenter's checkpoint inside the store, if it has one."""
        seg = self.manifest.get("segmenter") or {}
        name = seg.get("checkpoint")
        return self.path / name if name else None

    @property
    def presence(self) -> np.ndarray:
        """``[N, C]`` view: mean predicted probability of each class in each patch."""
        return self.features[:, self.layout.presence]

    @property
    def class_bald(self) -> np.ndarray:
        """``[N, C]`` view: one-vs-rest BALD of each class in each patch."""
        return self.features[:, self.layout.class_bald]

    @cached_property
    def split_codes(self) -> np.ndarray:
        """``[N]`` int8 split code of every patch (an index into :data:`SPLITS`)."""
        return np.asarray(self.patches[:, 3], dtype=np.int8)

    def split_ids(self, split: str) -> np.ndarray:
        """Sorted int64 ids of the patches in ``split`` (``"init"``, ``"pool"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        cache = self.__dict__.setdefault("_split_ids", {})
        if split not in cache:
            cache[split] = np.flatnonzero(self.split_codes == SPLITS.index(split))
        return cache[split]

    @property
    def can_reach_images(self) -> bool:
        """Whether the manifest says where the images are (stores written by ``prepare``)."""
        return "sources" in self.dataset and "items" in self.dataset

    def class_patches(self, split: str) -> np.ndarray:
        """``[C]`` number of patches of ``split`` that hold each class (from the manifest)."""
        self.split_ids(split)  # validates the name
        return np.asarray(self.manifest["class_patches"][split], dtype=np.int64)

    def boxes(self, patch_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """``[n, 4]`` int64 boxes ``(y0, x0, y1, x1)`` of the given patches in their images."""
        ids = np.asarray(patch_ids, dtype=np.int64)
        img, row, col = (np.asarray(self.patches[ids, k], dtype=np.int64) for k in range(3))
        h, w = (np.asarray(self.image_sizes[img, k], dtype=np.int64) for k in range(2))
        rows, cols = self.grid.rows, self.grid.cols
        y0, x0 = row * (h // rows), col * (w // cols)
        y1 = np.where(row == rows - 1, h, (row + 1) * (h // rows))
        x1 = np.where(col == cols - 1, w, (col + 1) * (w // cols))
        return np.stack([y0, x0, y1, x1], axis=1)

    @cached_property
    def areas(self) -> np.ndarray:
        """``[N]`` int64 pixel count of every patch."""
        b = self.boxes(np.arange(self.num_patches))
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    def class_index(self, target: str | int) -> int:
        """Resolve a class name or index to an index, with close matches in the error."""
        if isinstance(target, int | np.integer) and not isinstance(target, bool):
            if not 0 <= int(target) < self.num_classes:
                raise ValueError(
                    f"class index {target} out of range: this store has {self.num_classes} classes"
                )
            return int(target)
        if isinstance(target, str):
            if target in self.class_names:
                return self.class_names.index(target)
            if target.isdigit():
                return self.class_index(int(target))
            import difflib

            close = difflib.get_close_matches(target, self.class_names, n=5, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"unknown class {target!r} in store {self.path.name!r}.{hint} "
                f"Classes: {', '.join(self.class_names)}"
            )
        raise TypeError(f"a class is a name or an index, got {type(target).__name__}")

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, patches={self.num_patches}, "
            f"classes={self.num_classes}, grid={self.grid.rows}x{self.grid.cols})"
        )


def _npy_data_size(meta: Mapping[str, Any]) -> int:
    return int(np.prod(meta["shape"], dtype=np.int64)) * np.dtype(meta["dtype"]).itemsize
