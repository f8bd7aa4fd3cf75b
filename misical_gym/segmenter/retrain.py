"""Retraining on acquired patches: the evaluation's optional IoU step.

After a policy has picked its patches, :func:`retrain_iou` fine-tunes the store's frozen
segmenter on the init images (fully labelled) plus the images of the acquired patches, labelled
only inside those patches (255 = ignore elsewhere), then measures the target class's IoU on the
test split. Every policy starts from the same checkpoint with the same seed, so differences in
IoU come from the patches alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from misical_gym.data import IGNORE_INDEX, resize_example, store_image
from misical_gym.errors import DatasetError, StoreError
from misical_gym.runtime import cpu_threads, resolve_device
from misical_gym.segmenter.training import (
    TrainConfig,
    confusion_matrix,
    iou_from_confusion,
    load_segmenter,
    predict_labels,
    train_segmenter,
)
from misical_gym.store import FeatureStore

DEFAULT_RETRAIN_EPOCHS = 32
"""Fine-tuning epochs of :func:`retrain_iou`, set where the ``oracle`` policy's picks register.

On the default synthetic store (3,000 images of 64 px, one torch thread) a retrain on 100
acquired patches takes about 30 s on a busy two-core machine. At 16 epochs, ``misical evaluate
--retrain`` over 3 seeds gave IoU 0 on skis after every policy's picks, the oracle's 93-213 skis
pixels included, so the measurement could not tell any two policies apart there. At 32 epochs
the oracle's picks reach a mean IoU of 0.047 on skis, 0.207 on fork and 0.075 on surfboard
(3 seeds). The count was chosen on the oracle's picks, before the learned policies' picks were
retrained with it.
"""

RETRAIN_CONFIG = TrainConfig(
    epochs=DEFAULT_RETRAIN_EPOCHS,
    learning_rate=3e-3,
    class_weighting="inverse",
    max_class_weight=10.0,
)
"""Fine-tuning settings; ``epochs``, ``seed``, ``learning_rate`` and ``class_weighting`` are
replaced per call.

The default learning rate and weighting were chosen on the synthetic world, whose rare classes
the frozen segmenter barely predicts: inverse weights make the oracle's picks register there.
On CamVid, after the oracle's picks, they left three of the five rare classes below the frozen
segmenter's own IoU; the segmenter's own ``sqrt`` weighting lifts four of the five above it
(``misical evaluate --retrain-weighting sqrt``; ``benchmarks/retrain_settings.py`` measures
this, and the README's CamVid section reports it)."""


WEIGHTS_FROM = ("crops", "init")
"""Where :func:`retrain_confusion` computes its class weights: the fine-tuning crops' labels,
or the init images' full labels (the same for every policy's picks)."""

MIN_INIT_CROPS = 64
"""Init crops replayed when fewer patches than this were acquired."""

_BATCH = 32


class RetrainingSet(NamedTuple):
    """What :func:`retraining_set` builds, at the network's resolution."""

    images: np.ndarray
    """uint8 ``[N, H, W, 3]``: the init images first, then the other acquired images."""
    labels: np.ndarray
    """uint8 ``[N, H, W]``: full labels of init images, acquired patches only of the others."""
    num_init: int
    """Number of init images (the first rows)."""
    patch_boxes: np.ndarray
    """int64 ``[P, 5]``: ``(row, y0, x0, y1, x1)`` of every acquired patch outside init."""


def masked_label(label: np.ndarray, boxes: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """A copy of ``label`` that keeps its values inside ``boxes`` and is 255 everywhere else.

    Args:
        label: uint8 ``[H, W]`` train ids.
        boxes: ``[n, 4]`` boxes ``(y0, x0, y1, x1)`` in ``label``'s pixels; overlapping or
            adjacent boxes merge into one labelled region.
    """
    keep = np.zeros(label.shape, dtype=bool)
    for y0, x0, y1, x1 in np.asarray(boxes, dtype=np.int64).reshape(-1, 4):
        keep[y0:y1, x0:x1] = True
    return np.where(keep, label, np.uint8(IGNORE_INDEX)).astype(label.dtype)


def check_retrainable(store: FeatureStore) -> Path:
    """Raise a :class:`StoreError` unless ``store`` can be retrained on (images and checkpoint);
    returns the segmenter checkpoint.

    Reads one image and builds the checkpoint's segmenter, so a dataset that moved since
    ``prepare``, or a checkpoint that names an unknown architecture, is reported here, not
    halfway through an evaluation.
    """
    what = f"retraining on acquired patches needs the images and labels of store {store.path}"
    if not store.can_reach_images:
        raise StoreError(
            f"{what}, but its manifest does not record where they are (only stores written by "
            "`misical prepare` do)"
        )
    checkpoint = store.segmenter_checkpoint
    if checkpoint is None or not checkpoint.is_file():
        raise StoreError(f"{what} and its segmenter checkpoint, but the store has none")
    load_segmenter(checkpoint)
    _load(store, int(store.patches[0, 0]))
    return checkpoint


def retraining_set(store: FeatureStore, patch_ids: np.ndarray | Sequence[int]) -> RetrainingSet:
    """Init images with full labels plus the acquired images labelled inside their patches only.

    Every init image comes with its full label. Every other image holding an acquired patch
    comes with its label kept inside its acquired patches and 255 elsewhere (several patches of
    one image merge into one masked label). Images and labels are at the network's resolution
    (the size ``prepare`` resized to, if any); masks are cut at the original resolution first.
    """
    ids = np.asarray(patch_ids, dtype=np.int64).reshape(-1)
    init_images = np.unique(np.asarray(store.patches[store.split_ids("init"), 0]))
    patch_images = np.asarray(store.patches[ids, 0], dtype=np.int64)
    boxes = store.boxes(ids)
    outside = ~np.isin(patch_images, init_images)  # init images are labelled already
    acquired_images = np.unique(patch_images[outside])
    sources, items = store.dataset["sources"], store.dataset["items"]
    unlabelled = [i for i in acquired_images if sources[items[i][0]].get("kind") == "unlabelled"]
    if unlabelled:
        # `misical label` keeps counts, not pixels: the dataset has no label to train on.
        raise StoreError(
            f"{store.path}: {len(unlabelled)} picked image(s), e.g. "
            f"{store.image_ids[unlabelled[0]]!r}, were added without labels; retraining needs "
            "their pixel labels, which the store does not keep"
        )
    images, labels, patch_boxes = [], [], []
    for index in init_images:
        image, label = _load(store, int(index))
        images.append(image)
        labels.append(label)
    for index in acquired_images:
        mine = boxes[patch_images == index]
        height, width = store.image_sizes[index]
        image, label = _load(store, int(index), mine)
        scale = np.array([image.shape[0] / height, image.shape[1] / width] * 2)
        scaled = np.round(mine * scale).astype(np.int64)
        patch_boxes += [[len(images), *box] for box in scaled]
        images.append(image)
        labels.append(label)
    if len({image.shape for image in images}) > 1:
        raise StoreError(
            f"{store.path}: its images differ in size and it was prepared without --image-size, "
            "so they cannot be batched for retraining"
        )
    return RetrainingSet(
        np.stack(images),
        np.stack(labels),
        len(init_images),
        np.array(patch_boxes, dtype=np.int64).reshape(-1, 5),
    )


def training_crops(
    data: RetrainingSet, crop: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The crops fine-tuning trains on: every acquired patch in context, and as many init tiles.

    Each acquired patch gives one ``crop``-sized window centred on it (clamped inside its
    image) with that image's masked label, so a neighbouring acquired patch shows up labelled
    too. The init images are cut into ``crop``-sized tiles covering every pixel, of which
    ``max(P, MIN_INIT_CROPS)`` are drawn with ``rng`` (P acquired patches): the labelled
    pixels the frozen segmenter was trained on are replayed while the acquired ones are learnt.
    """
    (ch, cw), (height, width) = crop, data.images.shape[1:3]
    windows = []
    for row, y0, x0, y1, x1 in data.patch_boxes:
        top = int(np.clip((y0 + y1 - ch) // 2, 0, height - ch))
        left = int(np.clip((x0 + x1 - cw) // 2, 0, width - cw))
        windows.append((row, top, left))
    ys = np.unique(np.minimum(np.arange(0, height, ch), height - ch))
    xs = np.unique(np.minimum(np.arange(0, width, cw), width - cw))
    tiles = [(row, y, x) for row in range(data.num_init) for y in ys for x in xs]
    count = min(len(tiles), max(len(windows), MIN_INIT_CROPS))
    windows += [tiles[i] for i in np.sort(rng.choice(len(tiles), count, replace=False))]
    images = np.stack([data.images[r, y : y + ch, x : x + cw] for r, y, x in windows])
    labels = np.stack([data.labels[r, y : y + ch, x : x + cw] for r, y, x in windows])
    return images, labels


def retrain_iou(
    store: FeatureStore,
    target: int | str,
    patch_ids: np.ndarray | Sequence[int],
    *,
    seed: int = 0,
    epochs: int = DEFAULT_RETRAIN_EPOCHS,
    learning_rate: float = RETRAIN_CONFIG.learning_rate,
    class_weighting: str = RETRAIN_CONFIG.class_weighting,
    device: str = "cpu",
    threads: int | None = 1,
    weights_from: str = "crops",
) -> float:
    """The target's test IoU after fine-tuning the store's segmenter on init plus ``patch_ids``.

    ``target`` is the class, by name or index; the other arguments are
    :func:`retrain_confusion`'s, which does the fine-tuning and the test pass.

    Returns:
        The IoU in [0, 1]; NaN when the class is neither in the test split nor predicted.

    Raises:
        ValueError: invalid fine-tuning settings, or an unknown target.
        StoreError: the store cannot reach its images and labels, or has no checkpoint.
    """
    target_id = store.class_index(target)
    confusion = retrain_confusion(
        store,
        patch_ids,
        seed=seed,
        epochs=epochs,
        learning_rate=learning_rate,
        class_weighting=class_weighting,
        device=device,
        threads=threads,
        weights_from=weights_from,
    )
    return float(iou_from_confusion(confusion)[target_id])


def retrain_confusion(
    store: FeatureStore,
    patch_ids: np.ndarray | Sequence[int],
    *,
    seed: int = 0,
    epochs: int = DEFAULT_RETRAIN_EPOCHS,
    learning_rate: float = RETRAIN_CONFIG.learning_rate,
    class_weighting: str = RETRAIN_CONFIG.class_weighting,
    device: str = "cpu",
    threads: int | None = 1,
    weights_from: str = "crops",
) -> np.ndarray:
    """The test split's ``[C, C]`` (true, predicted) pixel counts after fine-tuning the store's
    segmenter on init plus ``patch_ids``.

    Every call starts from the store's frozen checkpoint, so policies are compared from one
    starting point. Fine-tuning (:data:`RETRAIN_CONFIG`: Adam at ``learning_rate`` with cosine
    decay, ``class_weighting`` weights capped at 10, ``epochs`` epochs) runs on
    :func:`training_crops` of :func:`retraining_set`: windows twice the patch size around the
    acquired patches plus as many init tiles. Crops cost a quarter of whole images, and whole
    images spend most of their compute on unlabelled pixels and on init images the checkpoint
    already fits. By default the class weights follow the crops' labels, so a class the policy
    acquired many pixels of is not over-weighted into false positives; it is weighted less the
    more of it the picks hold. ``weights_from="init"`` takes them from the init images' full
    labels instead: the same weights after every policy's picks. Everything is seeded by
    ``seed``: on the CPU the same arguments give the same counts. The test split is then
    predicted whole at the resolution ``prepare`` used, streaming the images in batches.

    Args:
        store: A store written by ``misical prepare`` whose dataset is still where it was.
        patch_ids: The acquired patches (patches of init images add nothing).
        seed: Seed of the init tiles drawn, shuffling, flips and dropout.
        epochs: Fine-tuning epochs (0: the frozen segmenter's counts).
        learning_rate: Adam's learning rate at the start of the fine-tuning.
        class_weighting: ``inverse``, ``sqrt`` or ``none`` (see
            :class:`~misical_gym.segmenter.TrainConfig`).
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: torch CPU threads during the call (``None``: half the cores).
        weights_from: ``crops`` or ``init``: the labels the class weights are computed from.

    Raises:
        ValueError: invalid fine-tuning settings.
        StoreError: the store cannot reach its images and labels, or has no checkpoint.
    """
    if weights_from not in WEIGHTS_FROM:
        raise ValueError(
            f"weights_from must be one of {', '.join(WEIGHTS_FROM)}, got {weights_from!r}"
        )
    config = dataclasses.replace(
        RETRAIN_CONFIG,
        epochs=int(epochs),
        seed=int(seed),
        learning_rate=float(learning_rate),
        class_weighting=class_weighting,
    )
    checkpoint = check_retrainable(store)
    with cpu_threads(threads):
        torch_device = resolve_device(device)
        model = load_segmenter(checkpoint, torch_device)
        data = retraining_set(store, patch_ids)
        height, width = data.images.shape[1:3]
        crop = (
            min(height, 2 * (height // store.grid.rows)),
            min(width, 2 * (width // store.grid.cols)),
        )
        images, labels = training_crops(data, crop, np.random.default_rng(seed))
        weight_labels = data.labels[: data.num_init] if weights_from == "init" else labels
        del data
        train_segmenter(
            model,
            images,
            labels,
            config,
            device=torch_device,
            progress=False,
            weight_labels=weight_labels,
        )
        confusion = np.zeros((store.num_classes, store.num_classes), dtype=np.int64)
        for images, labels in _test_batches(store):
            predicted = predict_labels(model, images, device=torch_device)
            confusion += confusion_matrix(predicted, labels, store.num_classes)
    return confusion


def _test_batches(store: FeatureStore) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The test images and labels, ``_BATCH`` at a time, at the network's resolution."""
    indices = np.unique(np.asarray(store.patches[store.split_ids("test"), 0]))
    for start in range(0, len(indices), _BATCH):
        pairs = [_load(store, int(i)) for i in indices[start : start + _BATCH]]
        yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _load(
    store: FeatureStore, index: int, boxes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` and its label (masked to ``boxes`` if given), resized as prepare did."""
    try:
        image, label = store_image(store, index)
    except (DatasetError, OSError) as exc:
        raise StoreError(
            f"retraining on acquired patches needs the images and labels of store {store.path}, "
            f"but its dataset cannot be read: {exc}"
        ) from exc
    if boxes is not None:
        label = masked_label(label, boxes)  # boxes are in the original image's pixels
    size = store.manifest.get("config", {}).get("prepare", {}).get("image_size")
    if size is None:
        return image, label
    return resize_example(image, label, size)
