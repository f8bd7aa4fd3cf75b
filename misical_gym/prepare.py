"""``misical prepare``: train the segmenter once, extract every patch's features, write a store.

The expensive stage of the pipeline. Everything after it (environments, agents, selection)
reads the store and never runs the network again. A store directory ``DIR`` has a sibling
``DIR.build/`` with the segmenter's TensorBoard logs and its checkpoint, so a killed prepare
resumes after training; the store itself is written atomically at the very end.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.data.base import SegmentationDataset
from misical_gym.data.patches import PatchGrid, split_indices
from misical_gym.paths import default_store_path
from misical_gym.store import SPLITS, FeatureStore

SYNTHETIC_DEFAULTS: dict[str, Any] = {"images": 3000, "seed": 0, "image_size": 64}
"""The default synthetic world: 3,000 images of 64 px (300 init, 300 test, 2,400 pool)."""


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
    epochs: int = 20
    """Segmenter training epochs on the init split."""
    width: int = 16
    """Channels of the default segmenter's first level."""
    image_size: int | None = None
    """Resize images to this square size for the network (None: native size)."""
    batch_size: int = 32
    """Images per feature-extraction batch."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    seed: int = 0
    """Seed of the split and of segmenter training."""

    def __post_init__(self) -> None:
        if self.mc_samples < 1:
            raise ValueError(f"--mc-samples must be at least 1, got {self.mc_samples}")
        if self.mc_stride < 1:
            raise ValueError(f"--mc-stride must be at least 1, got {self.mc_stride}")
        if self.epochs < 0:
            raise ValueError(f"--epochs must be non-negative, got {self.epochs}")
        for name in ("init_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "grid"}
        out["grid"] = [self.grid.rows, self.grid.cols]
        return out


def prepare(
    sources: Sequence[SegmentationDataset],
    image_splits: Sequence[np.ndarray],
    out: str | os.PathLike[str],
    config: PrepareConfig = PrepareConfig(),
    *,
    extra_dataset_info: dict[str, Any] | None = None,
    model: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> FeatureStore:
    """Run the whole stage and write the store at ``out``.

    Args:
        sources: Datasets whose images enter the store (e.g. a train list and a test list).
        image_splits: For each source, the split code (index in ``SPLITS``) of each image.
        out: Store directory to create.
        config: Settings.
        extra_dataset_info: Merged into the manifest's ``dataset`` field (e.g. rare classes).
        model: A segmenter to train instead of the default :class:`SmallUNet`: any torch module
            with ``encode(x)``, ``head(z)``, ``num_classes`` and a ``config`` dict of its
            constructor arguments (so its checkpoint can be rebuilt).
        overwrite: Replace an existing store.
        progress: Show progress bars.

    Returns:
        The written store, opened.
    """
    import torch

    from misical_gym.features import mc_patch_features, patch_class_counts
    from misical_gym.segmenter import (
        SmallUNet,
        TrainConfig,
        load_segmenter,
        resolve_device,
        save_segmenter,
        segment_iou,
        train_segmenter,
    )

    out = Path(out).expanduser()
    if (out / "manifest.json").exists() and not overwrite:
        raise FileExistsError(f"a store already exists at {out}; pass --overwrite to replace it")
    class_names = tuple(sources[0].class_names)
    if any(tuple(s.class_names) != class_names for s in sources):
        raise ValueError("all sources of a store must share one class list")
    if len(sources) != len(image_splits) or any(
        len(s) != len(codes) for s, codes in zip(sources, image_splits, strict=True)
    ):
        raise ValueError("give one split code per image of every source")
    items = [(k, i) for k, s in enumerate(sources) for i in range(len(s))]
    split_of = np.concatenate([np.asarray(c, dtype=np.int64) for c in image_splits])
    for code, name in enumerate(SPLITS[:2]):
        if not (split_of == code).any():
            raise ValueError(f"the {name} split is empty; adjust the fractions or the image count")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    num_classes = len(class_names)

    def network_item(index: int) -> tuple[np.ndarray, np.ndarray]:
        source, item = items[index]
        image, label = sources[source][item]
        if config.image_size is not None:
            image, label = _resize(image, label, config.image_size)
        return image, label

    build = out.with_name(out.name + ".build")
    build.mkdir(parents=True, exist_ok=True)
    train_config = TrainConfig(epochs=config.epochs, seed=config.seed)
    fingerprint = _fingerprint(
        [s.spec for s in sources],
        split_of.tolist(),
        config.to_dict(),
        class_names,
        None if model is None else [type(model).__qualname__, model.config],
    )
    checkpoint = build / "segmenter.pt"
    done = build / "segmenter.done.json"
    if (
        checkpoint.is_file()
        and done.is_file()
        and json.loads(done.read_text())["fingerprint"] == fingerprint
    ):
        model = load_segmenter(checkpoint, device)  # resume: training already finished
        history = json.loads(done.read_text())["history"]
    else:
        init = np.flatnonzero(split_of == SPLITS.index("init"))
        test = np.flatnonzero(split_of == SPLITS.index("test"))[:200]
        images, labels = _stack(network_item(i) for i in init)
        val = _stack(network_item(i) for i in test) if test.size else (None, None)
        if model is None:
            model = SmallUNet(num_classes, width=config.width)
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
            val_images=val[0],
            val_labels=val[1],
            log_dir=build / "tb",
            progress=progress,
        )
        save_segmenter(model, checkpoint)
        done.write_text(json.dumps({"fingerprint": fingerprint, "history": history}))

    from tqdm.auto import tqdm

    grid = config.grid
    p = grid.num_patches
    n = len(items)
    features = np.empty((n * p, 3 + 2 * num_classes), dtype=np.float32)
    counts = np.empty((n * p, num_classes), dtype=np.int32)
    image_sizes = np.empty((n, 2), dtype=np.int32)
    test_images: list[np.ndarray] = []
    test_labels: list[np.ndarray] = []
    bar = tqdm(total=n, desc="features", unit="img", disable=not progress)
    start = 0
    while start < n:
        # A batch holds consecutive images of one network size.
        batch_images, batch_full_labels = [], []
        first = network_item(start)
        size = first[0].shape
        index = start
        while index < n and len(batch_images) < config.batch_size:
            net_image, net_label = first if index == start else network_item(index)
            if net_image.shape != size:
                break
            source, item = items[index]
            full_label = sources[source][item][1] if config.image_size is not None else net_label
            batch_images.append(net_image)
            batch_full_labels.append(full_label)
            if split_of[index] == SPLITS.index("test"):
                test_images.append(net_image)
                test_labels.append(net_label)
            index += 1
        x = torch.from_numpy(np.stack(batch_images)).to(device).permute(0, 3, 1, 2) / 255.0
        rows = slice(start * p, index * p)
        features[rows] = mc_patch_features(
            model, x, grid, config.mc_samples, config.mc_stride
        ).reshape(-1, features.shape[1])
        counts[rows] = np.concatenate(
            [patch_class_counts(lab, grid, num_classes) for lab in batch_full_labels]
        )
        image_sizes[start:index] = [lab.shape for lab in batch_full_labels]
        bar.update(index - start)
        start = index
    bar.close()

    test_iou = (
        segment_iou(model, np.stack(test_images), np.stack(test_labels), device=device)
        if test_images and len({im.shape for im in test_images}) == 1
        else np.full(num_classes, np.nan)
    )
    image_index = np.repeat(np.arange(n), p)
    cell = np.tile(np.arange(p), n)
    patches = np.stack([image_index, cell // grid.cols, cell % grid.cols, split_of[image_index]], 1)
    dataset = {
        "kind": sources[0].spec["kind"],
        "sources": [s.spec for s in sources],
        "items": items,
        **(extra_dataset_info or {}),
    }
    store = FeatureStore.write(
        out,
        features=features,
        counts=counts,
        patches=patches,
        image_sizes=image_sizes,
        image_ids=[sources[s].image_ids[i] for s, i in items],
        class_names=class_names,
        grid=grid,
        dataset=dataset,
        config={"prepare": config.to_dict(), "segmenter_training": train_config.__dict__},
        segmenter={
            "checkpoint": "segmenter.pt",
            "test_iou": [None if np.isnan(v) else float(v) for v in test_iou],
            "history": history,
            "tensorboard": str(build / "tb"),
        },
        files={"segmenter.pt": checkpoint},
        overwrite=overwrite,
    )
    return store


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
) -> FeatureStore:
    """Prepare the offline synthetic world (default location: the ``synthetic`` store)."""
    from misical_gym.data.synthetic import SyntheticScenes

    config = config or PrepareConfig(seed=seed)
    world = SyntheticScenes(images, seed, image_size=image_size)
    test, rest = split_indices(len(world), config.test_fraction, seed + 1)
    init_local, _ = split_indices(len(rest), config.init_fraction, seed)
    codes = np.full(len(world), SPLITS.index("pool"), dtype=np.int64)
    codes[test] = SPLITS.index("test")
    codes[rest[init_local]] = SPLITS.index("init")
    return prepare(
        [world],
        [codes],
        out if out is not None else default_store_path("synthetic"),
        config,
        extra_dataset_info={"rare_classes": list(world.rare_classes)},
        model=model,
        overwrite=overwrite,
        progress=progress,
    )


def trainval_test_splits(
    trainval: SegmentationDataset, test: SegmentationDataset | None, config: PrepareConfig
) -> list[np.ndarray]:
    """Split codes for a dataset with (or without) its own test list: init / pool (/ test)."""
    n = len(trainval)
    codes = np.full(n, SPLITS.index("pool"), dtype=np.int64)
    if test is None:
        held, rest = split_indices(n, config.test_fraction, config.seed + 1)
        codes[held] = SPLITS.index("test")
        init_local, _ = split_indices(len(rest), config.init_fraction, config.seed)
        codes[rest[init_local]] = SPLITS.index("init")
        return [codes]
    init, _ = split_indices(n, config.init_fraction, config.seed)
    codes[init] = SPLITS.index("init")
    return [codes, np.full(len(test), SPLITS.index("test"), dtype=np.int64)]


def _stack(pairs: Any) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*pairs, strict=True)
    if len({im.shape for im in images}) != 1:
        raise ValueError("training images differ in size; pass --image-size to resize them")
    return np.stack(images), np.stack(labels)


def _resize(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    resized_label = np.asarray(Image.fromarray(label).resize((size, size), Image.NEAREST))
    return resized, resized_label


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
