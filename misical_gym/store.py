"""The feature store: per-patch features and oracle counts, on disk, memory-mapped.

A store is a directory::

    manifest.json     schema version, dataset, class names, grid, feature names, checksums
    features.npy      float32 [N, F]  the frozen segmenter's features (observations)
    counts.npy        int32   [N, C]  oracle pixel count of every class (rewards, never observed)
    patches.npy       int32   [N, 4]  image index, grid row, grid col, split code
    image_sizes.npy   int32   [I, 2]  height and width of every image
    labelled.npy      bool    [N]     whether a patch's oracle counts are known (schema 2)
    segmenter.pt      optional        the frozen segmenter's checkpoint

Arrays are opened with ``numpy.load(mmap_mode="r")``, so opening a store costs almost no memory.
A store is untrusted input: opening checks every manifest field's type, that every file it names
lies inside the store, the shapes, the CRC-32 checksums and the values (features inside their
bounds, counts non-negative and no larger than their patch, patches inside their image and grid,
unknown counts all zero), once per process and file version.

An unlabelled patch (``labelled`` False: an image added without labels) has features but
unknown oracle counts. Its ``counts`` row is stored as zeros, which are not zeros: nothing may
read them as such (the environments draw only labelled patches; ``misical label`` fills them).

Writing goes to a temporary directory that is renamed into place at the end, so a killed writer
leaves no store that opens; :meth:`FeatureStore.update` commits by renaming the manifest.
This module imports NumPy only: the environments read stores without torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from misical_gym.atomic import atomic_directory, atomic_write_text, file_lock
from misical_gym.data.patches import PatchGrid
from misical_gym.errors import StoreError
from misical_gym.layout import DEFAULT_UNCERTAINTY, FeatureLayout

SCHEMA_VERSION = 3
"""Version 3 added the extra uncertainty columns (``misical prepare --uncertainty``); a store
with only the default ones is still written as version 2, which earlier releases read. Version
2 added ``labelled.npy``. Version 1 stores (written before any patch could be unlabelled) are
still read, as all labelled, so every existing store and result stays valid."""
READABLE_VERSIONS: tuple[int, ...] = (1, 2, 3)
MANIFEST = "manifest.json"
_LOCK = ".update.lock"
"""Held by :meth:`FeatureStore.update`: one writer at a time."""
SPLITS: tuple[str, ...] = ("init", "pool", "test")
"""Split names; ``patches[:, 3]`` holds the index of a patch's split in this tuple."""
_ARRAYS: dict[str, tuple[str, str]] = {
    # name: (dtype, shape description for messages)
    "features": ("float32", "[N, F]"),
    "counts": ("int32", "[N, C]"),
    "patches": ("int32", "[N, 4]"),
    "image_sizes": ("int32", "[I, 2]"),
    "labelled": ("bool", "[N]"),
}
_SINCE_VERSION = {"labelled": 2}
"""Arrays that older schema versions do not have."""
_SCANNED = ("features", "counts")
"""The arrays whose checksums and values are checked in one read (nearly all of a store)."""
_CHUNK = 16 << 20
_verified: dict[tuple[str, int, int], int] = {}
_values_checked: set[tuple[tuple[str, int, int], ...]] = set()


def file_crc32(path: Path) -> int:
    """CRC-32 of a file, read in chunks (never mapped, so resident memory does not grow)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _file_key(path: Path) -> tuple[str, int, int]:
    """Identifies one version of a file: its resolved path, size and modification time."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _verify_checksum(path: Path, expected: int) -> None:
    key = _file_key(path)
    if _verified.get(key) == expected:
        return
    _check_crc(path, file_crc32(path), expected)
    _verified[key] = expected


def _check_crc(path: Path, actual: int, expected: int) -> None:
    if actual != expected:
        raise StoreError(
            f"{path}: checksum mismatch (crc32 {actual:08x}, manifest says {expected:08x}); "
            "the file is corrupt or was changed after the store was written. "
            "Prepare the store again."
        )


class FeatureStore:
    """A prepared, read-only feature store. Create with :meth:`open` or :meth:`write`."""

    def __init__(self, path: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.path = path
        self.manifest = manifest
        self.features: np.ndarray = arrays["features"]
        self.counts: np.ndarray = arrays["counts"]
        self.patches: np.ndarray = arrays["patches"]
        self.image_sizes: np.ndarray = arrays["image_sizes"]
        self._labelled: np.ndarray | None = arrays.get("labelled")
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
        raw = manifest_path.read_bytes()
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{manifest_path}: not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict):
            raise StoreError(
                f"{manifest_path}: a {type(manifest).__name__}, not the JSON object of a store "
                "manifest. Prepare the store again."
            )
        version = manifest.get("schema_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise StoreError(
                f"{manifest_path}: store schema version {version!r}, this package reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}. Prepare the store again "
                "with this version."
            )
        _check_manifest(manifest, manifest_path)
        arrays = {}
        for name, (dtype, _) in _ARRAYS.items():
            if name not in manifest["arrays"]:
                continue  # an array of a later schema version (_check_manifest checked which)
            meta = manifest["arrays"][name]
            file = path / meta["file"]
            if not file.is_file():
                raise StoreError(f"{file}: missing from the store (the manifest lists it)")
            expected_size = _npy_data_size(meta)
            try:
                array = np.load(file, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise StoreError(f"{file}: unreadable or truncated array ({exc})") from exc
            if array.shape != tuple(meta["shape"]) or array.dtype != np.dtype(dtype):
                raise StoreError(
                    f"{file}: shape {array.shape} {array.dtype}, manifest says "
                    f"{tuple(meta['shape'])} {dtype}"
                )
            if array.nbytes != expected_size:
                raise StoreError(f"{file}: truncated ({array.nbytes} of {expected_size} bytes)")
            if not array.flags.c_contiguous:
                raise StoreError(f"{file}: stored in Fortran order; a store writes C order")
            if verify and name not in _SCANNED:
                _verify_checksum(file, meta["crc32"])
            arrays[name] = array
        for name, meta in manifest["files"].items():
            file = path / name
            if not file.is_file():
                raise StoreError(f"{file}: missing from the store (the manifest lists it)")
            if verify:
                _verify_checksum(file, meta["crc32"])
        store = cls(path, manifest, arrays)
        # Of the manifest as read now: an update checks that the store is still this one.
        store.__dict__["fingerprint"] = hashlib.sha256(raw).hexdigest()[:16]
        store._check_consistency()
        if verify:
            store._verify_scanned()
        return store

    def _check_consistency(self) -> None:
        n, c = self.num_patches, self.num_classes
        if n == 0:
            raise StoreError(f"{self.path}: the store holds no patches")
        expect = {
            "features": (n, len(self.feature_names)),
            "counts": (n, c),
            "patches": (n, 4),
            "image_sizes": (len(self.image_ids), 2),
            "labelled": (n,),
        }
        for name, shape in expect.items():
            actual = getattr(self, name).shape
            if actual != shape:
                raise StoreError(f"{self.path / (name + '.npy')}: shape {actual}, expected {shape}")
        try:
            layout = self.layout
        except ValueError as exc:
            raise StoreError(f"{self.path / MANIFEST}: {exc}") from None
        version = self.manifest["schema_version"]
        if version < SCHEMA_VERSION and layout.uncertainty != DEFAULT_UNCERTAINTY:
            raise StoreError(
                f"{self.path / MANIFEST}: schema version {version} has no extra uncertainty "
                f"columns, yet feature_names hold {', '.join(layout.uncertainty)}"
            )
        for split in SPLITS:
            if len(self.manifest["class_patches"][split]) != c:
                raise StoreError(
                    f"{self.path / MANIFEST}: class_patches[{split!r}] has "
                    f"{len(self.manifest['class_patches'][split])} entries, not one per class ({c})"
                )

    def _verify_scanned(self) -> None:
        """Checksums of features and counts and :func:`check_values` on the whole store.

        The checksums only say that the files match the manifest, and whoever edits a file can
        edit the manifest too, so the values are checked as well. Features and counts, nearly
        all of a store's bytes, are read once for both, in blocks of rows; a process checks one
        version of a store's files once.
        """
        arrays = {name: self.path / meta["file"] for name, meta in self.manifest["arrays"].items()}
        key = tuple(_file_key(file) for file in (self.path / MANIFEST, *arrays.values()))
        if key in _values_checked:
            return
        patches = np.asarray(self.patches)  # 16 bytes a patch: small enough to read whole
        labelled = np.asarray(self.labelled)
        sizes = np.asarray(self.image_sizes)
        step = max(1, _CHUNK // max(self.features[:1].nbytes, 1))
        blocks = zip(
            *(
                _checked_rows(arrays[name], getattr(self, name), self.manifest, name, step)
                for name in _SCANNED
            ),
            strict=True,
        )
        problem = None
        # A bad value is reported only once the checksums held: a corrupt file is named as such.
        for index, (feature_rows, count_rows) in enumerate(blocks):
            if problem is None:
                first = index * step
                try:
                    check_values(
                        features=feature_rows,
                        counts=count_rows,
                        patches=patches[first : first + len(feature_rows)],
                        labelled=labelled[first : first + len(feature_rows)],
                        image_sizes=sizes,
                        grid=self.grid,
                        first_patch=first,
                        uncertainty=self.layout.uncertainty,
                    )
                except StoreError as exc:
                    problem = exc
        if problem is not None:
            raise StoreError(f"{self.path}: {problem}. Prepare the store again.") from None
        _values_checked.add(key)

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
        labelled: np.ndarray | None = None,
        config: Mapping[str, Any] | None = None,
        segmenter: Mapping[str, Any] | None = None,
        files: Mapping[str, str | os.PathLike[str]] | None = None,
        overwrite: bool = False,
        uncertainty: Sequence[str] = DEFAULT_UNCERTAINTY,
    ) -> FeatureStore:
        """Validate the arrays and write a store atomically; return it opened.

        Args:
            path: Directory to create.
            features: ``[N, G + 2C]`` finite features in the order of
                ``FeatureLayout.of(class_names, uncertainty)``.
            counts: ``[N, C]`` non-negative oracle pixel counts (zeros where unlabelled).
            patches: ``[N, 4]`` image index, grid row, grid col, split code (index in SPLITS).
            image_sizes: ``[I, 2]`` image heights and widths.
            image_ids: ``I`` image ids.
            class_names: ``C`` unique class names.
            grid: The patch grid.
            dataset: How to reach the images again (``{"kind": ..., ...}``), JSON-serialisable.
            labelled: ``[N]`` bool, whether each patch's counts are known (default: all).
            config: The settings that produced the store, for reproducibility.
            segmenter: Segmenter metadata, e.g. ``{"checkpoint": "segmenter.pt", "test_iou": []}``.
            files: Extra files to copy into the store, by name (e.g. the segmenter checkpoint).
            overwrite: Replace an existing store at ``path``.
            uncertainty: The uncertainty metrics of the global columns (bald and entropy by
                default; see :data:`~misical_gym.layout.UNCERTAINTY_COLUMNS`).

        Raises:
            StoreError: an array has the wrong shape or dtype, or features are NaN or infinite.
        """
        path = Path(path).expanduser()
        class_names = tuple(str(c) for c in class_names)
        if len(set(class_names)) != len(class_names):
            raise StoreError("class_names must be unique")
        c = len(class_names)
        layout = FeatureLayout.of(class_names, uncertainty)
        feature_names = layout.names
        arrays = {
            "features": np.asarray(features),
            "counts": np.asarray(counts),
            "patches": np.asarray(patches),
            "image_sizes": np.asarray(image_sizes),
        }
        n = arrays["features"].shape[0] if arrays["features"].ndim == 2 else -1
        arrays["labelled"] = np.ones(max(n, 0), bool) if labelled is None else np.asarray(labelled)
        _check_shapes(arrays, len(feature_names), c, len(image_ids))
        if n < 1:
            raise StoreError("a store needs at least one patch")
        try:
            check_values(
                features=arrays["features"],
                counts=arrays["counts"],
                patches=arrays["patches"],
                image_sizes=arrays["image_sizes"],
                grid=grid,
                uncertainty=layout.uncertainty,
            )
        except StoreError as exc:
            raise StoreError(f"{exc}; refusing to write {path}") from None
        overwrite = check_destination(path, overwrite)
        manifest: dict[str, Any] = {
            "schema_version": _schema_version(layout),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "name": path.name,
            "dataset": dict(dataset),
            "class_names": list(class_names),
            "grid": [grid.rows, grid.cols],
            "feature_names": list(feature_names),
            "num_patches": n,
            "image_ids": [str(i) for i in image_ids],
            "class_patches": _class_patches(arrays["counts"], arrays["patches"]),
            "segmenter": dict(segmenter) if segmenter else None,
            "config": dict(config or {}),
            "arrays": {},
            "files": {},
        }
        with atomic_directory(path, overwrite=overwrite) as tmp:
            for name, array in arrays.items():
                manifest["arrays"][name] = _save_array(tmp / f"{name}.npy", name, array)
            for name, src in (files or {}).items():
                shutil.copyfile(src, tmp / name)
                manifest["files"][name] = {"crc32": file_crc32(tmp / name)}
            # The manifest goes last: a directory without one is never opened as a store.
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        return cls.open(path)

    def update(
        self,
        *,
        image_ids: Sequence[str] | None = None,
        dataset: Mapping[str, Any] | None = None,
        **arrays: np.ndarray,
    ) -> FeatureStore:
        """Replace some of the store's arrays in place, atomically; return the store reopened.

        The new arrays are checked as :meth:`write` checks them, then saved under fresh names
        beside the old ones, and a new manifest naming them replaces the old one in one rename:
        a writer killed at any moment leaves the store as it was, or as it is now, and never a
        mix. The files the old manifest named are removed once the new one is in place, and a
        killed writer's fresh files are removed by the next update (both only ever the store's
        own array files). Updates hold a lock, one at a time, and an update of a store that
        another one changed since it was opened is refused (its arrays would undo that change).
        A version 1 store is written as version 2, with its label state.

        Args:
            image_ids: The new image ids (with new ``image_sizes``, when images were added).
            dataset: The new ``dataset`` field (where the images are).
            **arrays: New ``features``, ``counts``, ``patches``, ``image_sizes``, ``labelled``.

        Raises:
            StoreError: an array has the wrong shape or dtype, or values a store may not hold,
                or the store changed since it was opened.
        """
        with file_lock(self.path / _LOCK):
            return self._update_locked(image_ids, dataset, arrays)

    def _update_locked(
        self,
        image_ids: Sequence[str] | None,
        dataset: Mapping[str, Any] | None,
        arrays: Mapping[str, np.ndarray],
    ) -> FeatureStore:
        if _digest(self.path / MANIFEST) != self.fingerprint:
            raise StoreError(
                f"{self.path} changed since it was opened (another label or add-images ran); "
                "nothing changed: run the command again"
            )
        unknown = set(arrays) - set(_ARRAYS)
        if unknown:
            raise TypeError(f"unknown store array(s): {', '.join(sorted(unknown))}")
        new = {name: np.asarray(arrays.get(name, getattr(self, name))) for name in _ARRAYS}
        ids = list(self.image_ids if image_ids is None else image_ids)
        _check_shapes(new, len(self.feature_names), self.num_classes, len(ids))
        n = new["features"].shape[0]
        check_values(
            features=new["features"],
            counts=new["counts"],
            patches=new["patches"],
            image_sizes=new["image_sizes"],
            labelled=new["labelled"],
            grid=self.grid,
            uncertainty=self.layout.uncertainty,
        )
        old_files = {meta["file"] for meta in self.manifest["arrays"].values()}
        manifest = {
            **self.manifest,
            "schema_version": _schema_version(self.layout),
            "num_patches": int(n),
            "image_ids": [str(i) for i in ids],
            "class_patches": _class_patches(new["counts"], new["patches"]),
            "dataset": dict(self.dataset if dataset is None else dataset),
            "arrays": dict(self.manifest["arrays"]),
            # Files exported before this update (picks, annotations) name the store as it was.
            "lineage": [*self.manifest.get("lineage", []), self.fingerprint],
        }
        _remove_leftovers(self.path, old_files)
        written = []
        try:
            for name in _ARRAYS:
                if name in arrays or name not in self.manifest["arrays"]:
                    file = self.path / f"{name}.{secrets.token_hex(4)}.npy"
                    written.append(file)
                    manifest["arrays"][name] = _save_array(file, name, new[name])
            # The commit point: one rename of the manifest.
            atomic_write_text(self.path / MANIFEST, json.dumps(manifest, indent=1))
        except BaseException:
            for file in written:
                file.unlink(missing_ok=True)
            raise
        current = {meta["file"] for meta in manifest["arrays"].values()}
        for name in old_files - current:
            (self.path / name).unlink(missing_ok=True)
        return type(self).open(self.path)

    # ------------------------------------------------------------------ views
    @property
    def labelled(self) -> np.ndarray:
        """``[N]`` read-only bool: True where a patch's oracle counts are known.

        A version 1 store has no label state and reads as all labelled.
        """
        if self._labelled is None:
            labelled = np.ones(self.num_patches, dtype=bool)
            labelled.flags.writeable = False
            self._labelled = labelled
        return self._labelled

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
        return _digest(self.path / MANIFEST)

    def knows_fingerprint(self, fingerprint: str) -> bool:
        """Whether ``fingerprint`` is this store's, now or before one of its updates.

        :meth:`update` only labels patches or appends images, so a file made for an earlier
        version of the store (picks sent to annotators) still names the same images and patches.
        """
        return fingerprint == self.fingerprint or fingerprint in self.manifest.get("lineage", [])

    @cached_property
    def layout(self) -> FeatureLayout:
        """Where each feature column is, read from ``feature_names``."""
        return FeatureLayout.from_names(self.feature_names, self.class_names)

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

    def split_ids(self, split: str, labelled: bool | None = None) -> np.ndarray:
        """Sorted int64 ids of the patches in ``split`` (``"init"``, ``"pool"`` or ``"test"``).

        Args:
            split: The split's name.
            labelled: None: every patch of the split; True: only those whose counts are known;
                False: only those whose counts are unknown.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        cache = self.__dict__.setdefault("_split_ids", {})
        key = (split, None if labelled is None else bool(labelled))
        if key not in cache:
            keep = self.split_codes == SPLITS.index(split)
            if labelled is not None:
                keep &= self.labelled == bool(labelled)
            cache[key] = np.flatnonzero(keep)
        return cache[key]

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
        return patch_boxes(self.patches[ids], self.image_sizes, self.grid)

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


def patch_boxes(patches: np.ndarray, image_sizes: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """``[n, 4]`` int64 boxes ``(y0, x0, y1, x1)`` of ``patches`` rows (image, row, col, ...)."""
    img, row, col = (np.asarray(patches[:, k], dtype=np.int64) for k in range(3))
    h, w = (np.asarray(image_sizes[img, k], dtype=np.int64) for k in range(2))
    rows, cols = grid.rows, grid.cols
    y0, x0 = row * (h // rows), col * (w // cols)
    y1 = np.where(row == rows - 1, h, (row + 1) * (h // rows))
    x1 = np.where(col == cols - 1, w, (col + 1) * (w // cols))
    return np.stack([y0, x0, y1, x1], axis=1)


def check_values(
    *,
    features: np.ndarray,
    counts: np.ndarray,
    patches: np.ndarray,
    image_sizes: np.ndarray,
    grid: PatchGrid,
    labelled: np.ndarray | None = None,
    first_patch: int = 0,
    uncertainty: Sequence[str] = DEFAULT_UNCERTAINTY,
) -> None:
    """Raise a :class:`StoreError` unless the arrays hold values a store may hold.

    Features lie within ``[0, FeatureLayout.upper_bounds]`` (so none is NaN or infinite), counts are
    non-negative and no patch counts more pixels than it has (a grid edited in the manifest
    shrinks the patches under their counts), unlabelled patches count nothing, patches name an
    image, a grid cell and a split that exist, and every image is at least as large as the grid.
    A few passes over memory: about a tenth of a second on COCO-Stuff 10k's 160,000 patches.

    Args:
        features, counts, patches: The same rows of the three arrays (all, or a block of them).
        image_sizes: Every image's height and width.
        grid: The patch grid.
        labelled: The same rows of the label state (None: all labelled).
        first_patch: Index of the first row, for messages about a block.
        uncertainty: The store's uncertainty metrics (they set the global columns' bounds).
    """
    if features.shape[0] == 0:
        raise StoreError("a store needs at least one patch")
    bounds = FeatureLayout.positional(counts.shape[1], uncertainty).upper_bounds()
    # Column-wise min and max carry NaN along, and every comparison with NaN is False.
    low, high = features.min(axis=0), features.max(axis=0)
    bad_columns = np.flatnonzero(~((low >= 0) & (high <= bounds)))
    if bad_columns.size:
        column = bad_columns[0]
        values = np.asarray(features[:, column])
        row = int(np.flatnonzero(~((values >= 0) & (values <= bounds[column])))[0])
        value = float(values[row])
        what = "NaN or infinite values" if not math.isfinite(value) else "values out of range"
        raise StoreError(
            f"features hold {what} (first at patch {first_patch + row}, column {column}: {value}; "
            f"expected 0..{bounds[column]:.4g})"
        )
    if (np.asarray(counts.min(axis=0)) < 0).any():
        raise StoreError("counts must be non-negative")
    if labelled is not None:
        if labelled.dtype != np.bool_:
            raise StoreError(f"labelled must be a bool array, got {labelled.dtype}")
        unknown = np.flatnonzero(~labelled & counts.any(axis=1))
        if unknown.size:
            raise StoreError(
                f"patch {first_patch + unknown[0]} is unlabelled but counts pixels (the counts of "
                "an unlabelled patch are unknown and stored as zeros)"
            )
    p = np.asarray(patches, dtype=np.int64)
    limits = (len(image_sizes), grid.rows, grid.cols, len(SPLITS))
    if (p.min(axis=0) < 0).any() or (p.max(axis=0) >= limits).any():
        raise StoreError("patches hold an image index, grid cell or split code out of range")
    sizes = np.asarray(image_sizes, dtype=np.int64)
    if sizes.size and ((sizes[:, 0] < grid.rows) | (sizes[:, 1] < grid.cols)).any():
        raise StoreError(f"some image is smaller than the {grid.rows}x{grid.cols} patch grid")
    boxes = patch_boxes(p, sizes, grid)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    over = np.flatnonzero(counts.sum(axis=1, dtype=np.int64) > areas)
    if over.size:
        raise StoreError(
            f"patch {first_patch + over[0]} counts more labelled pixels than its {areas[over[0]]} "
            f"(the {grid.rows}x{grid.cols} grid does not fit the counts)"
        )


def _check_shapes(
    arrays: Mapping[str, np.ndarray], num_features: int, num_classes: int, num_images: int
) -> None:
    """Raise a :class:`StoreError` unless the arrays to write have one shape of one store."""
    n = arrays["features"].shape[0] if arrays["features"].ndim == 2 else -1
    expect = {
        "features": (n, num_features),
        "counts": (n, num_classes),
        "patches": (n, 4),
        "image_sizes": (num_images, 2),
        "labelled": (n,),
    }
    for name, shape in expect.items():
        if arrays[name].shape != shape:
            raise StoreError(f"{name}: shape {arrays[name].shape}, expected {shape}")


def _digest(manifest: Path) -> str:
    """The fingerprint of the manifest file (see :attr:`FeatureStore.fingerprint`)."""
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]


def _class_patches(counts: np.ndarray, patches: np.ndarray) -> dict[str, list[int]]:
    """Per split, how many patches hold each class: inspect and target draws read this instead
    of scanning the counts. Unlabelled patches count nothing (their counts are zeros)."""
    present = np.asarray(counts) > 0
    codes = np.asarray(patches[:, 3])
    return {split: present[codes == code].sum(axis=0).tolist() for code, split in enumerate(SPLITS)}


def _save_array(file: Path, name: str, array: np.ndarray) -> dict[str, Any]:
    """Save one store array in its dtype and C order; return its manifest entry."""
    dtype = _ARRAYS[name][0]
    data = np.ascontiguousarray(array, dtype=dtype)
    np.save(file, data)
    return {"file": file.name, "dtype": dtype, "shape": list(data.shape), "crc32": file_crc32(file)}


def _remove_leftovers(path: Path, current: set[str]) -> None:
    """Remove what a killed :meth:`FeatureStore.update` left in ``path``: array files of its own
    pattern (``<array>.<hex>.npy``) that the manifest does not name, and the manifest's
    temporary file (:func:`~misical_gym.atomic.atomic_path`'s ``.manifest.json.<hex>.tmp``)."""
    patterns = [f"{name}.*.npy" for name in _ARRAYS] + [f".{MANIFEST}.*.tmp"]
    for pattern in patterns:
        for file in path.glob(pattern):
            if file.name not in current and file.is_file() and not file.is_symlink():
                file.unlink()


def _checked_rows(
    file: Path, array: np.ndarray, manifest: Mapping[str, Any], name: str, rows: int
) -> Iterator[np.ndarray]:
    """``array``'s rows, ``rows`` at a time, from plain reads of ``file``; at the end, raise a
    :class:`StoreError` unless the file's CRC-32 is the one the manifest records.

    Never through the memory map: every page read through a map counts towards the process's
    resident memory, and opening a store should not make the environment look large.
    """
    expected = manifest["arrays"][name]["crc32"]
    with open(file, "rb") as f:
        crc = zlib.crc32(f.read(file.stat().st_size - array.nbytes))  # the .npy header
        for start in range(0, array.shape[0], rows):
            count = min(rows, array.shape[0] - start)
            block = np.fromfile(f, dtype=array.dtype, count=count * array.shape[1])
            crc = zlib.crc32(block.data, crc)
            yield block.reshape(count, array.shape[1])
    _check_crc(file, crc, expected)
    _verified[_file_key(file)] = expected


def check_destination(path: Path, overwrite: bool) -> bool:
    """Check that a store may be written at ``path``; say whether an existing one is replaced.

    Only a store (a directory with a manifest) is ever replaced, and only with ``overwrite``;
    an empty directory is used as it is. Anything else is refused and left untouched: ``--out``
    naming the user's own folder or file must never delete it.

    Raises:
        FileExistsError: ``path`` holds a store and ``overwrite`` is False.
        StoreError: ``path`` is a file, or a directory that holds something other than a store.
    """
    if not path.exists():
        return False
    if not path.is_dir():
        raise StoreError(f"{path} is a file, not a store directory; refusing to replace it")
    if (path / MANIFEST).is_file():
        if not overwrite:
            raise FileExistsError(
                f"a store already exists at {path}; pass --overwrite to replace it"
            )
        return True
    if any(path.iterdir()):
        raise StoreError(
            f"{path} is a directory that holds files but no feature store ({MANIFEST}); "
            "refusing to write a store there, with --overwrite or not, so nothing of it is "
            "deleted. Choose another directory."
        )
    return True


def _schema_version(layout: FeatureLayout) -> int:
    """The version a store of ``layout`` is written as: 2 unless it has extra uncertainty
    columns, so stores of the default columns stay readable by earlier releases."""
    return SCHEMA_VERSION if layout.uncertainty != DEFAULT_UNCERTAINTY else 2


def _check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Raise a :class:`StoreError` unless every manifest field has the type the schema says.

    Files the manifest names must be plain names, so they lie inside the store.
    """

    def fail(field: str, expected: str) -> NoReturn:
        raise StoreError(
            f"{path}: field {field!r} is {manifest.get(field)!r:.80}, expected {expected}; "
            "the manifest is damaged or was edited. Prepare the store again."
        )

    def strings(field: str) -> bool:
        value = manifest.get(field)
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    for field in ("class_names", "feature_names", "image_ids"):
        if not strings(field):
            fail(field, "a list of strings")
    names = manifest["class_names"]
    if not names or len(set(names)) != len(names):
        fail("class_names", "a non-empty list of unique class names")
    grid = manifest.get("grid")
    if not (isinstance(grid, list) and len(grid) == 2 and all(count(v) and v > 0 for v in grid)):
        fail("grid", "[rows, cols] of positive integers")
    if not count(manifest.get("num_patches")):
        fail("num_patches", "a non-negative integer")
    if not isinstance(manifest.get("dataset"), dict):
        fail("dataset", "an object")
    class_patches = manifest.get("class_patches")
    if not (
        isinstance(class_patches, dict)
        and all(
            isinstance(class_patches.get(split), list) and all(map(count, class_patches[split]))
            for split in SPLITS
        )
    ):
        fail("class_patches", f"per split ({', '.join(SPLITS)}) a list of patch counts")
    arrays = manifest.get("arrays")
    version = manifest["schema_version"]
    names = [n for n in _ARRAYS if _SINCE_VERSION.get(n, 1) <= version]
    if not (
        isinstance(arrays, dict)
        and set(arrays) == set(names)
        and all(isinstance(arrays[n], dict) for n in names)
    ):
        fail("arrays", f"an object describing {', '.join(names)} (schema version {version})")
    for name in names:
        dtype, description = _ARRAYS[name]
        ndim = description.count(",") + 1
        meta = arrays[name]
        shape = meta.get("shape")
        if not (
            _is_plain_name(meta.get("file"))
            and meta.get("dtype") == dtype
            and isinstance(shape, list)
            and len(shape) == ndim
            and all(map(count, shape))
            and count(meta.get("crc32"))
        ):
            fail(
                "arrays",
                f"for {name!r} a file name inside the store, dtype {dtype}, a {ndim}-D shape "
                "and a crc32",
            )
    if len({arrays[n]["file"] for n in names}) != len(names):
        fail("arrays", "a different file for every array")
    files = manifest.get("files")
    if not (
        isinstance(files, dict)
        and all(
            _is_plain_name(name) and isinstance(meta, dict) and count(meta.get("crc32"))
            for name, meta in files.items()
        )
    ):
        fail("files", "file names inside the store, each with a crc32")
    lineage = manifest.get("lineage", [])
    if not (isinstance(lineage, list) and all(isinstance(v, str) for v in lineage)):
        fail("lineage", "a list of fingerprints")
    segmenter = manifest.get("segmenter")
    if segmenter is not None and not (
        isinstance(segmenter, dict)
        and (segmenter.get("checkpoint") is None or segmenter.get("checkpoint") in files)
    ):
        fail("segmenter", "null, or an object whose checkpoint is one of the store's files")


def _is_plain_name(name: Any) -> bool:
    """Whether ``name`` is a file name without directories: it can only name a file inside."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST)
        and not any(sep in name for sep in ("/", "\\", "\0"))
    )


def _npy_data_size(meta: Mapping[str, Any]) -> int:
    return int(np.prod(meta["shape"], dtype=np.int64)) * np.dtype(meta["dtype"]).itemsize
