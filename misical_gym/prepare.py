"""``misical prepare``: train the segmenter once, extract every patch's features, write a store.

The expensive stage of the pipeline. Everything after it (environments, agents, selection)
reads the store and never runs the network again.

A store directory ``DIR`` has a sibling ``DIR.build/`` holding the segmenter's TensorBoard logs
(``tb/``) and its checkpoint. A prepare that is killed after training resumes from that
checkpoint when run again with the same data and training settings. The store itself is written
atomically at the very end, so a killed prepare never leaves a store that opens.

The manifest's ``dataset`` field says how to reach every image again::

    {
      "kind": "coco10k",                  # kind of the first source, for display
      "sources": [spec, spec, ...],       # each source's ``spec``; ``open_dataset`` rebuilds it
      "items": [[source, item], ...],     # per store image: index into sources, index in it
      "rare_classes": [17, 18, 19],       # designed rare class ids (synthetic world only)
    }

so a store may combine several datasets, e.g. COCO-Stuff 10k's train list (init and pool) and
its test list (test).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.atomic import atomic_write_text, check_writable_dir
from misical_gym.data.base import SegmentationDataset
from misical_gym.data.patches import PatchGrid, split_indices
from misical_gym.data.resize import resize_example
from misical_gym.data.unlabelled import UnlabelledImages
from misical_gym.errors import DatasetError
from misical_gym.layout import DEFAULT_UNCERTAINTY, FeatureLayout, check_uncertainty
from misical_gym.paths import default_store_path
from misical_gym.store import SPLITS, FeatureStore, check_destination

SYNTHETIC_DEFAULTS: dict[str, Any] = {"images": 3000, "seed": 0, "image_size": 64}
"""The default synthetic world: 3,000 images of 64 px (300 test, 270 init, 2,430 pool)."""

CAMVID_DEFAULTS: dict[str, Any] = {
    "image_size": 192,
    "epochs": 120,
    "train_crop": 128,
    "train_batch_size": 8,
    "levels": 4,
    "init_fraction": 0.3,
}
"""``misical prepare camvid``'s settings where they differ from :class:`PrepareConfig`'s.

Measured on the 2-core machine with one torch thread: 192 px lifted every frequent class's test
IoU over 128 px (tree 0.512 -> 0.582 at 100 epochs), but whole 192-px images train at about 15 s
an epoch, so random 128-px windows of them (0.44 of the cost) train instead. Four U-Net levels
see more context than three, and batches of 8 windows take twice the gradient steps of 16:
together they lift mean test IoU from 0.425 to 0.464 (tree from 0.562 to 0.605) and take 1.19
times as long as three levels in batches of 16 (14 min 14 s against 11 min 55 s on one
machine)."""


def camvid_config(**settings: Any) -> PrepareConfig:
    """The CamVid preset, :data:`CAMVID_DEFAULTS`, with ``settings`` overriding it.

    Without a ``train_crop`` of its own, an ``image_size`` of the preset's window or less trains
    on whole images: a window only saves time on images larger than itself.
    """
    preset = dict(CAMVID_DEFAULTS)
    size = settings.get("image_size", preset["image_size"])
    if "train_crop" not in settings and size is not None and size <= preset["train_crop"]:
        preset["train_crop"] = None
    return PrepareConfig().replace(**{**preset, **settings})


_VALIDATIONS = 50
"""Validation passes of segmenter training: about this many at most (every epoch up to 50
epochs, then every ``epochs // 50``). Validating CamVid's 22 images at 192 px costs a tenth of
an epoch on 128-px windows, which is worth paying every second epoch, not every one."""

_VALIDATION_PIXELS = 200 * 64 * 64
"""Network-input pixels of the test images whose mIoU segmenter training logs: 200 synthetic
images, 22 CamVid ones at 192 px. A budget in pixels keeps this logging a small
share of an epoch at any image size."""


_DEFAULT_LEVELS, _MAX_LEVELS = 3, 8
"""The segmenter's default and largest resolution levels, ``segmenter.model.DEFAULT_LEVELS``
and ``MAX_LEVELS`` (not imported from there: the segmenter imports torch). The default is left
out of manifests and build fingerprints, so that a default store's are what they were before
the setting existed."""

_DEFAULT_TRAIN_BATCH = 16
"""``TrainConfig.batch_size``'s default, for the same reason; left out of manifests at it."""


@dataclass(frozen=True)
class PrepareConfig:
    """Settings shared by every ``misical prepare`` command."""

    grid: PatchGrid = field(default_factory=lambda: PatchGrid(4, 4))
    """The patch grid laid over every image."""
    init_fraction: float = 0.1
    """Share of the trainable images labelled from the start (init); the rest is the pool."""
    test_fraction: float = 0.1
    """Share of images held out for testing, for datasets without their own test list."""
    mc_samples: int = 20
    """MC-dropout samples T of the head."""
    mc_stride: int = 4
    """The head's resolution for MC statistics: encoder features average-pooled by this."""
    uncertainty: tuple[str, ...] = DEFAULT_UNCERTAINTY
    """The uncertainty metrics of the store's global columns (``--uncertainty``): bald and
    entropy always, and any of :data:`~misical_gym.features.EXTRA_METRICS`."""
    epochs: int = 20
    """Segmenter training epochs on the init split."""
    train_crop: int | None = None
    """Train the segmenter on a random square window of this side of every image per epoch
    (None: whole images); see :attr:`~misical_gym.segmenter.TrainConfig.crop`."""
    train_batch_size: int = _DEFAULT_TRAIN_BATCH
    """Images (or windows) per segmenter training step."""
    width: int = 16
    """Channels of the default segmenter's first level."""
    levels: int = _DEFAULT_LEVELS
    """Resolution levels of the default segmenter (:class:`~misical_gym.segmenter.SmallUNet`)."""
    image_size: int | None = None
    """Resize images to this square size for the network (None: native size)."""
    batch_size: int = 32
    """Images per feature-extraction batch."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    seed: int = 0
    """Seed of the split, of segmenter training and of the dropout masks."""
    threads: int | None = None
    """torch CPU threads (None: half the cores, see ``segmenter.default_threads``)."""

    def __post_init__(self) -> None:
        if self.mc_samples < 1:
            raise ValueError(f"--mc-samples must be at least 1, got {self.mc_samples}")
        if self.mc_stride < 1:
            raise ValueError(f"--mc-stride must be at least 1, got {self.mc_stride}")
        # In column order, from any sequence (a manifest's settings hold a list).
        object.__setattr__(self, "uncertainty", check_uncertainty(tuple(self.uncertainty)))
        if self.epochs < 0:
            raise ValueError(f"--epochs must be non-negative, got {self.epochs}")
        if self.train_crop is not None and not (
            8 <= self.train_crop <= (self.image_size or self.train_crop)
        ):
            raise ValueError(
                "--train-crop must be at least 8 px and at most --image-size, "
                f"got {self.train_crop}"
            )
        if not 2 <= self.levels <= _MAX_LEVELS:
            raise ValueError(
                f"--levels must be at least 2 and at most {_MAX_LEVELS}, got {self.levels}"
            )
        if self.train_batch_size < 1:
            raise ValueError(f"--train-batch-size must be at least 1, got {self.train_batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")
        if self.seed < 0:
            raise ValueError(f"--seed must be non-negative, got {self.seed}")
        for name in ("init_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict (the grid as ``[rows, cols]``)."""
        out = {k: v for k, v in self.__dict__.items() if k != "grid"}
        out["grid"] = [self.grid.rows, self.grid.cols]
        # Left out at the default, so a default store's manifest is what it has always been.
        if self.uncertainty == DEFAULT_UNCERTAINTY:
            del out["uncertainty"]
        else:
            out["uncertainty"] = list(self.uncertainty)
        if self.train_crop is None:
            del out["train_crop"]
        if self.levels == _DEFAULT_LEVELS:
            del out["levels"]
        if self.train_batch_size == _DEFAULT_TRAIN_BATCH:
            del out["train_batch_size"]
        return out

    def replace(self, **settings: Any) -> PrepareConfig:
        """A copy with some settings changed; ``grid`` may be given as ``"ROWSxCOLS"``."""
        unknown = set(settings) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(
                f"unknown prepare setting(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(f.name for f in dataclasses.fields(self))}"
            )
        if isinstance(settings.get("grid"), str):
            settings["grid"] = PatchGrid.parse(settings["grid"])
        return dataclasses.replace(self, **settings)


def default_splits(
    datasets: Sequence[SegmentationDataset], config: PrepareConfig
) -> list[np.ndarray]:
    """Split codes (indices into ``SPLITS``) for every image of every dataset.

    One dataset: ``test_fraction`` of its images are held out for test, ``init_fraction`` of the
    rest is init, the others are pool. Two datasets: a train list split into init and pool, and
    a test list that is all test (COCO-Stuff's own split).
    """
    if len(datasets) not in (1, 2):
        raise ValueError(
            "give one dataset (split by fractions) or a train and a test dataset; "
            f"got {len(datasets)} datasets without explicit splits"
        )
    n = len(datasets[0])
    codes = np.full(n, SPLITS.index("pool"), dtype=np.int64)
    if len(datasets) == 1:
        held, rest = split_indices(n, config.test_fraction, config.seed + 1)
        codes[held] = SPLITS.index("test")
        init_local, _ = split_indices(len(rest), config.init_fraction, config.seed)
        codes[rest[init_local]] = SPLITS.index("init")
        return [codes]
    init, _ = split_indices(n, config.init_fraction, config.seed)
    codes[init] = SPLITS.index("init")
    return [codes, np.full(len(datasets[1]), SPLITS.index("test"), dtype=np.int64)]


def prepare(
    datasets: SegmentationDataset | Sequence[SegmentationDataset],
    out: str | os.PathLike[str],
    config: PrepareConfig | None = None,
    *,
    splits: Sequence[np.ndarray] | None = None,
    model: Any = None,
    extra_dataset_info: dict[str, Any] | None = None,
    unlabelled: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **settings: Any,
) -> FeatureStore:
    """Split, train the segmenter on init, extract every patch's features, write the store.

    Example::

        prepare([CocoStuff10k(root, "train"), CocoStuff10k(root, "test")], "coco10k",
                image_size=256, init_fraction=0.1, grid="4x4", mc_samples=20, device="cuda")

    Args:
        datasets: One dataset, or a train and a test dataset (see :func:`default_splits`), or
            any number of datasets with explicit ``splits``. All share one class list.
        out: Store directory to create.
        config: Settings (default :class:`PrepareConfig`).
        splits: For each dataset, the split code (index in ``SPLITS``) of each image; default
            :func:`default_splits`.
        model: A segmenter to train instead of the default :class:`SmallUNet`: any torch module
            with ``encode(x)``, ``head(z)``, ``num_classes`` and a ``config`` dict of its
            constructor arguments (so its checkpoint can be rebuilt).
        extra_dataset_info: Merged into the manifest's ``dataset`` field (e.g. rare classes).
        unlabelled: A folder of images without labels (:class:`UnlabelledImages`): they join
            the pool split, get features, and their patches are unlabelled (counts unknown).
        overwrite: Replace an existing store.
        progress: Show progress bars (training and features).
        **settings: :class:`PrepareConfig` fields overriding ``config`` (e.g. ``epochs=5``).

    Returns:
        The written store, opened.

    Raises:
        DatasetError: an unlabelled image has the name of an image of the datasets.
    """
    from misical_gym.runtime import cpu_threads

    sources = [datasets] if isinstance(datasets, SegmentationDataset) else list(datasets)
    if not sources:
        raise ValueError("prepare needs at least one dataset")
    config = (config or PrepareConfig()).replace(**settings)
    # Absolute and normalised: "--out ." has no name to derive the build folder's name from.
    out = Path(os.path.abspath(Path(out).expanduser()))
    # Before any work, not after hours of it.
    check_destination(out, overwrite)
    check_writable_dir(out.parent)
    class_names = tuple(sources[0].class_names)
    if any(tuple(s.class_names) != class_names for s in sources):
        raise ValueError("all datasets of a store must share one class list")
    splits = default_splits(sources, config) if splits is None else splits
    if unlabelled is not None:
        extra = UnlabelledImages(unlabelled, class_names)
        check_new_image_ids([i for s in sources for i in s.image_ids], extra)
        sources, splits = [*sources, extra], [*splits, np.full(len(extra), SPLITS.index("pool"))]
    if len(splits) != len(sources) or any(
        len(s) != len(codes) for s, codes in zip(sources, splits, strict=True)
    ):
        raise ValueError("give one split code per image of every dataset")
    split_of = np.concatenate([np.asarray(c, dtype=np.int64) for c in splits])
    if ((split_of < 0) | (split_of >= len(SPLITS))).any():
        raise ValueError(f"split codes must index {SPLITS}")
    for code, name in enumerate(SPLITS[:2]):
        if not (split_of == code).any():
            raise ValueError(f"the {name} split is empty; adjust the fractions or the image count")
    with cpu_threads(config.threads):
        return _prepare(
            sources, split_of, out, config, model, extra_dataset_info, overwrite, progress
        )


def _prepare(
    sources: list[SegmentationDataset],
    split_of: np.ndarray,
    out: Path,
    config: PrepareConfig,
    model: Any,
    extra_dataset_info: dict[str, Any] | None,
    overwrite: bool,
    progress: bool,
) -> FeatureStore:
    import torch

    from misical_gym.runtime import resolve_device
    from misical_gym.segmenter import (
        SmallUNet,
        TrainConfig,
        confusion_matrix,
        iou_from_confusion,
        load_segmenter,
        predict_labels,
        register_segmenter,
        save_segmenter,
        train_segmenter,
    )
    from misical_gym.segmenter.training import config_dict

    device = resolve_device(config.device)
    class_names = tuple(sources[0].class_names)
    num_classes = len(class_names)
    items = [(k, i) for k, s in enumerate(sources) for i in range(len(s))]
    load = _loader(sources, items, config.image_size)
    _check_images(sources, items, load, config, progress)
    if model is not None:
        register_segmenter(type(model))  # the caller's own class: its checkpoint may build it

    # ------------------------------------------------ segmenter (cached in the build folder)
    build = out.with_name(out.name + ".build")
    build.mkdir(parents=True, exist_ok=True)
    train_config = TrainConfig(
        epochs=config.epochs,
        batch_size=config.train_batch_size,
        crop=config.train_crop,
        seed=config.seed,
    )
    fingerprint = _fingerprint(
        [s.spec for s in sources],
        split_of.tolist(),
        [config.epochs, config.width, config.image_size, config.seed]
        + ([] if config.levels == _DEFAULT_LEVELS else [config.levels]),
        config_dict(train_config),
        class_names,
        None if model is None else [type(model).__qualname__, model.config],
    )
    checkpoint, done = build / "segmenter.pt", build / "segmenter.done.json"
    cached = json.loads(done.read_text()) if done.is_file() and checkpoint.is_file() else {}
    if cached.get("fingerprint") == fingerprint:
        model, history = load_segmenter(checkpoint, device), cached["history"]
    else:
        init = np.flatnonzero(split_of == SPLITS.index("init"))
        images, labels = _stack([load(int(i))[:2] for i in init])
        val_count = max(1, _VALIDATION_PIXELS // (images.shape[1] * images.shape[2]))
        val = np.flatnonzero(split_of == SPLITS.index("test"))[:val_count]
        val_images, val_labels = (
            _stack([load(int(i))[:2] for i in val]) if val.size else (None, None)
        )
        torch.manual_seed(config.seed)  # the default model's initial weights
        if model is None:
            model = SmallUNet(num_classes, width=config.width, levels=config.levels)
        elif model.num_classes != num_classes:
            raise ValueError(
                f"the segmenter predicts {model.num_classes} classes, not {num_classes}"
            )
        history = train_segmenter(
            model,
            images,
            labels,
            train_config,
            device=device,
            val_images=val_images,
            val_labels=val_labels,
            val_every=max(1, config.epochs // _VALIDATIONS),
            log_dir=build / "tb",
            progress=progress,
        )
        save_segmenter(model, checkpoint)
        atomic_write_text(done, json.dumps({"fingerprint": fingerprint, "history": history}))

    # ------------------------------------------------ features, counts, test IoU
    grid, p, n = config.grid, config.grid.num_patches, len(items)
    # Built on disk in the build folder (COCO-164k's features alone take gigabytes); the store
    # copies them and they are removed whatever happens.
    partial = {"features": build / "features.partial.npy", "counts": build / "counts.partial.npy"}
    try:
        features = np.lib.format.open_memmap(
            partial["features"],
            "w+",
            np.float32,
            (n * p, FeatureLayout.of(class_names, config.uncertainty).num_columns),
        )
        counts = np.lib.format.open_memmap(partial["counts"], "w+", np.int32, (n * p, num_classes))
        image_sizes = np.empty((n, 2), dtype=np.int32)
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        for start, stop, batch in extract_features(
            model, load, n, config, device, features, counts, image_sizes, progress
        ):
            is_test = split_of[start:stop] == SPLITS.index("test")
            if is_test.any():
                # IoU at the network's resolution, of the deterministic prediction.
                net_images = np.stack([b[0] for b, t in zip(batch, is_test, strict=True) if t])
                predicted = predict_labels(model, net_images, device=device)
                labels = np.stack([b[1] for b, t in zip(batch, is_test, strict=True) if t])
                confusion += confusion_matrix(predicted, labels, num_classes)
        features.flush()
        counts.flush()

        test_iou = iou_from_confusion(confusion)
        image_index = np.repeat(np.arange(n), p)
        cell = np.tile(np.arange(p), n)
        patches = np.stack(
            [image_index, cell // grid.cols, cell % grid.cols, split_of[image_index]], 1
        )
        known = np.concatenate(
            [np.full(len(s), not isinstance(s, UnlabelledImages)) for s in sources]
        )
        return FeatureStore.write(
            out,
            features=features,
            counts=counts,
            labelled=known[image_index],
            patches=patches,
            image_sizes=image_sizes,
            image_ids=[sources[s].image_ids[i] for s, i in items],
            class_names=class_names,
            grid=grid,
            dataset={
                "kind": sources[0].spec["kind"],
                "sources": [s.spec for s in sources],
                "items": items,
                **(extra_dataset_info or {}),
            },
            config={"prepare": config.to_dict(), "segmenter_training": config_dict(train_config)},
            segmenter={
                "checkpoint": "segmenter.pt",
                "model": dict(model.config),
                "test_iou": [None if np.isnan(v) else float(v) for v in test_iou],
                "history": history,
                "tensorboard": str(build / "tb"),
            },
            files={"segmenter.pt": checkpoint},
            overwrite=overwrite,
            uncertainty=config.uncertainty,
        )
    finally:
        for path in partial.values():
            path.unlink(missing_ok=True)


def extract_features(
    model: Any,
    load: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]],
    n: int,
    config: PrepareConfig,
    device: Any,
    features: np.ndarray,
    counts: np.ndarray,
    image_sizes: np.ndarray,
    progress: bool,
) -> Iterator[tuple[int, int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]]:
    """Fill every patch's features and oracle counts of images ``0..n-1``, a batch at a time.

    Images are read with ``load`` (network image, network label, original label) and batched
    by network size. Dropout masks depend on ``config.seed`` only, not on whether training ran
    or was resumed.

    Yields:
        ``(start, stop, batch)``: the images ``start..stop-1`` just written, as loaded.
    """
    import torch
    from tqdm.auto import tqdm

    from misical_gym.features import mc_patch_features, patch_class_counts

    grid, p, num_classes = config.grid, config.grid.num_patches, counts.shape[1]
    torch.manual_seed(config.seed)
    bar = tqdm(total=n, desc="features", unit="img", disable=not progress)
    start, pending = 0, None
    while start < n:
        batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        while start + len(batch) < n and len(batch) < config.batch_size:
            loaded = pending if pending is not None else load(start + len(batch))
            pending = None
            if batch and loaded[0].shape != batch[0][0].shape:
                pending = loaded  # a batch holds images of one network size
                break
            batch.append(loaded)
        stop = start + len(batch)
        net_images = np.stack([b[0] for b in batch])
        x = torch.from_numpy(net_images).to(device).permute(0, 3, 1, 2) / 255.0
        rows = slice(start * p, stop * p)
        features[rows] = mc_patch_features(
            model, x, grid, config.mc_samples, config.mc_stride, config.uncertainty
        ).reshape(-1, features.shape[1])
        counts[rows] = np.concatenate([patch_class_counts(b[2], grid, num_classes) for b in batch])
        image_sizes[start:stop] = [b[2].shape for b in batch]
        yield start, stop, batch
        bar.update(stop - start)
        start = stop
    bar.close()


def prepare_synthetic(
    out: str | os.PathLike[str] | None = None,
    *,
    images: int = SYNTHETIC_DEFAULTS["images"],
    seed: int = SYNTHETIC_DEFAULTS["seed"],
    image_size: int = SYNTHETIC_DEFAULTS["image_size"],
    config: PrepareConfig | None = None,
    model: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    **settings: Any,
) -> FeatureStore:
    """Prepare the offline synthetic world; the default location is the ``synthetic`` store.

    With its defaults (3,000 images of 64 px, 10% test, 10% of the rest init, a 4x4 grid,
    T=20) this takes under three minutes on two CPU cores (about 2.5), with progress bars.

    Args:
        out: Store directory (default: ``default_store_path("synthetic")``).
        images: Images to generate.
        seed: The world's seed, and the split and training seed unless ``config`` says otherwise.
        image_size: Image side in pixels.
        config: Settings (default: :class:`PrepareConfig` with ``seed``).
        model: A user segmenter (see :func:`prepare`).
        overwrite: Replace an existing store.
        progress: Show progress bars.
        **settings: :class:`PrepareConfig` fields overriding ``config`` (e.g. ``epochs=5``).

    Returns:
        The written store, opened.
    """
    from misical_gym.data.synthetic import SyntheticScenes

    world = SyntheticScenes(images, seed, image_size=image_size)
    return prepare(
        world,
        out if out is not None else default_store_path("synthetic"),
        config or PrepareConfig(seed=seed),
        model=model,
        extra_dataset_info={"rare_classes": list(world.rare_classes)},
        overwrite=overwrite,
        progress=progress,
        **settings,
    )


def _check_images(
    sources: Sequence[SegmentationDataset],
    items: Sequence[tuple[int, int]],
    load: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]],
    config: PrepareConfig,
    progress: bool,
) -> None:
    """Read every image once before training: a corrupt file, or an image too small for the
    grid or the MC stride, is reported before the segmenter has trained, not after.

    Raises:
        DatasetError: an image or label cannot be read (the dataset names the file).
        ValueError: an image, or the head's pooled output, has fewer pixels than the grid cells.
    """
    from tqdm.auto import tqdm

    grid, stride = config.grid, config.mc_stride
    checked: set[tuple[int, ...]] = set()
    for index in tqdm(range(len(items)), desc="checking images", unit="img", disable=not progress):
        net_image, _, label = load(index)
        (h, w), (net_h, net_w) = label.shape[:2], net_image.shape[:2]
        if (h, w, net_h, net_w) in checked:
            continue
        checked.add((h, w, net_h, net_w))
        source, item = items[index]
        name = f"image {sources[source].image_ids[item]!r}"
        for what, height, width in (("", h, w), (" at the network's size", net_h, net_w)):
            if height < grid.rows or width < grid.cols:
                raise ValueError(
                    f"{name} is {height}x{width}{what}, smaller than the {grid.rows}x{grid.cols} "
                    "patch grid; choose a coarser --grid (or a larger --image-size)"
                )
        head_h, head_w = max(net_h // stride, 1), max(net_w // stride, 1)
        if head_h < grid.rows or head_w < grid.cols:
            largest = min(net_h // grid.rows, net_w // grid.cols)
            raise ValueError(
                f"--mc-stride {stride} pools {name} ({net_h}x{net_w} at the network's size) to "
                f"{head_h}x{head_w}, fewer cells than the {grid.rows}x{grid.cols} patch grid; "
                f"use --mc-stride {largest} or less"
            )


def prepare_camvid(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    config: PrepareConfig | None = None,
    unlabelled: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **settings: Any,
) -> FeatureStore:
    """Prepare CamVid (SegNet layout); the default location is the ``camvid`` store.

    The train and val lists are split into init and pool, the test list is the test split, and
    the five rare classes (:data:`~misical_gym.data.camvid.CAMVID_RARE_CLASSES`) are recorded as
    the store's rare classes.

    Args:
        root: The CamVid folder.
        out: Store directory (default: ``default_store_path("camvid")``).
        config: Settings (default: :func:`camvid_config` of ``settings``).
        unlabelled: A folder of images without labels for the pool (see :func:`prepare`).
        overwrite: Replace an existing store.
        progress: Show progress bars.
        **settings: :class:`PrepareConfig` fields overriding ``config`` (or the preset).

    Returns:
        The written store, opened.
    """
    from misical_gym.data.camvid import CAMVID_CLASSES, CAMVID_RARE_CLASSES, camvid_datasets

    if config is None:
        config, settings = camvid_config(**settings), {}
    return prepare(
        camvid_datasets(root),
        out if out is not None else default_store_path("camvid"),
        config,
        extra_dataset_info={
            "rare_classes": [CAMVID_CLASSES.index(name) for name in CAMVID_RARE_CLASSES]
        },
        unlabelled=unlabelled,
        overwrite=overwrite,
        progress=progress,
        **settings,
    )


def check_new_image_ids(known: Sequence[str], new: UnlabelledImages) -> None:
    """Refuse images whose names a store already has: annotations come back by image name.

    An image id is a path without suffix; its last component is the file name.

    Raises:
        DatasetError: an image of ``new`` has a name in ``known``.
    """
    # By file name too: annotations may name an image by its file name alone.
    taken = set(known) | {image_id.rsplit("/", 1)[-1] for image_id in known}
    clash = [image_id for image_id in new.image_ids if image_id in taken]
    if clash:
        raise DatasetError(
            f"{len(clash)} image(s) in {new.images} have the name of an image the store already "
            f"has, e.g. {clash[0]!r}; annotations are matched back by image name, so rename them"
        )


def _loader(
    sources: Sequence[SegmentationDataset],
    items: Sequence[tuple[int, int]],
    image_size: int | None,
) -> Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``load(index)``: network image, network label and original label of image ``index``."""

    def load(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source, item = items[index]
        image, label = sources[source][item]
        if image_size is None:
            return image, label, label
        return (*resize_example(image, label, image_size), label)

    return load


def add_images(
    store: str | os.PathLike[str],
    images: str | os.PathLike[str],
    *,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
) -> FeatureStore:
    """Add a folder of unlabelled images to a store's pool, with the store's frozen segmenter.

    The new images' patches get features exactly as ``prepare`` computed the others' (the
    store's checkpoint, grid, image size, MC samples and stride) and unknown counts. The store
    is rewritten atomically (:meth:`FeatureStore.update`): a killed run leaves it as it was.

    Args:
        store: The store directory.
        images: The folder of new images (:class:`UnlabelledImages`).
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: torch CPU threads (None: half the cores).
        progress: Show progress bars.

    Returns:
        The updated store, opened.

    Raises:
        StoreError: the store cannot reach its images or has no segmenter checkpoint.
        DatasetError: the folder is missing or empty, an image is unreadable, or an image has
            the name of one the store already has.
    """
    from misical_gym.errors import StoreError
    from misical_gym.runtime import cpu_threads, resolve_device
    from misical_gym.segmenter import load_segmenter

    opened = FeatureStore.open(store)
    checkpoint = opened.segmenter_checkpoint
    settings = opened.manifest["config"].get("prepare")
    if not opened.can_reach_images or checkpoint is None or not isinstance(settings, dict):
        raise StoreError(
            f"{opened.path}: adding images needs the store's segmenter checkpoint, its prepare "
            "settings and the record of its images, which only stores written by "
            "`misical prepare` have"
        )
    try:
        grid = PatchGrid(*settings["grid"])
        config = PrepareConfig().replace(
            **{**settings, "grid": grid, "device": device, "threads": threads}
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{opened.path}: its prepare settings are damaged ({exc})") from None
    new = UnlabelledImages(images, opened.class_names)
    check_new_image_ids(opened.image_ids, new)
    items = [(0, i) for i in range(len(new))]
    load = _loader([new], items, config.image_size)
    _check_images([new], items, load, config, progress)
    m, p = len(new), config.grid.num_patches
    features = np.empty((m * p, opened.features.shape[1]), dtype=np.float32)
    counts = np.zeros((m * p, opened.num_classes), dtype=np.int32)
    sizes = np.empty((m, 2), dtype=np.int32)
    with cpu_threads(config.threads):
        torch_device = resolve_device(config.device)
        model = load_segmenter(checkpoint, torch_device)
        for _ in extract_features(
            model, load, m, config, torch_device, features, counts, sizes, progress
        ):
            pass  # the batches are written into the arrays
    first = len(opened.image_ids)
    cell = np.tile(np.arange(p), m)
    patches = np.stack(
        [
            first + np.repeat(np.arange(m), p),
            cell // config.grid.cols,
            cell % config.grid.cols,
            np.full(m * p, SPLITS.index("pool")),
        ],
        axis=1,
    )
    dataset = dict(opened.dataset)
    source = len(dataset["sources"])
    dataset["sources"] = [*dataset["sources"], new.spec]
    dataset["items"] = [*dataset["items"], *([source, i] for i in range(m))]
    return opened.update(
        features=np.concatenate([opened.features, features]),
        counts=np.concatenate([opened.counts, counts]),  # zeros: the labels are all 255
        patches=np.concatenate([opened.patches, patches]),
        image_sizes=np.concatenate([opened.image_sizes, sizes]),
        labelled=np.concatenate([opened.labelled, np.zeros(m * p, dtype=bool)]),
        image_ids=[*opened.image_ids, *new.image_ids],
        dataset=dataset,
    )


def _stack(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if len({image.shape for image, _ in pairs}) != 1:
        raise ValueError("training images differ in size; pass --image-size to resize them")
    return np.stack([image for image, _ in pairs]), np.stack([label for _, label in pairs])


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
