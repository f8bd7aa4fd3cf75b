"""Training, evaluation and checkpoints of segmenters (any module with ``encode`` and ``head``)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from misical_gym.atomic import atomic_path
from misical_gym.data.classes import IGNORE_INDEX
from misical_gym.errors import StoreError
from misical_gym.runtime import resolve_device

if TYPE_CHECKING:
    from misical_gym.segmenter.model import Segmenter

CLASS_WEIGHTINGS: tuple[str, ...] = ("sqrt", "inverse", "none")


@dataclass(frozen=True)
class TrainConfig:
    """How a segmenter is trained.

    The default ``sqrt`` weighting (``sqrt(median / frequency)``) is mild on purpose: the frozen
    model should see frequent and context classes sharply while a class with a handful of
    examples stays weak, as in the paper's setting. ``inverse`` (``median / frequency``, capped at
    ``max_class_weight``) learns rare, thin classes from fewer pixels, which retraining on
    acquired patches needs.
    """

    epochs: int = 20
    """Passes over the training images."""
    batch_size: int = 16
    """Images per gradient step."""
    learning_rate: float = 3e-3
    """Adam's learning rate (cosine-decayed to zero)."""
    weight_decay: float = 1e-4
    """Adam's weight decay."""
    class_weighting: str = "sqrt"
    """Cross-entropy class weights: ``sqrt``, ``inverse`` or ``none``."""
    max_class_weight: float = 50.0
    """Cap of any class weight."""
    crop: int | None = None
    """Train on one random ``crop`` x ``crop`` window of every image per epoch (None: whole
    images). The network is fully convolutional and still predicts whole images; a step costs
    the crop's share of the pixels, and the windows add translation augmentation."""
    seed: int = 0
    """Seed of initialisation, shuffling and dropout: the same seed gives the same model on CPU."""

    def __post_init__(self) -> None:
        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise ValueError(
                f"class_weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, "
                f"got {self.class_weighting!r}"
            )
        if self.epochs < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError(f"invalid training settings: {self}")
        if self.crop is not None and self.crop < 8:
            raise ValueError(f"crop must be at least 8 px, got {self.crop}")


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2) / 255.0


def class_weights(
    labels: np.ndarray, num_classes: int, weighting: str, cap: float = 50.0
) -> np.ndarray:
    """Cross-entropy class weights from the pixel frequencies of ``labels`` (255 ignored).

    Classes absent from ``labels`` get the largest weight any present class has.
    """
    if weighting == "none":
        return np.ones(num_classes, dtype=np.float32)
    freq = np.bincount(labels[labels != IGNORE_INDEX].ravel(), minlength=num_classes)[
        :num_classes
    ].astype(np.float64)
    present = freq > 0
    if not present.any():
        return np.ones(num_classes, dtype=np.float32)
    ratio = np.median(freq[present]) / np.where(present, freq, 1.0)
    weights = np.sqrt(ratio) if weighting == "sqrt" else ratio
    weights = np.minimum(weights, cap)
    weights[~present] = weights[present].max()
    return (weights / weights[present].mean()).astype(np.float32)


def train_segmenter(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig = TrainConfig(),
    *,
    device: str | torch.device = "auto",
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    val_every: int = 1,
    log_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    weight_labels: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place with class-weighted cross-entropy (255 = ignore).

    Works from scratch or as fine-tuning of a loaded checkpoint; labels may be mostly 255 (only
    acquired patches labelled). Random horizontal flips augment the images, and random windows
    too with ``config.crop``.

    Args:
        model: A segmenter with ``encode``/``head`` (``forward`` = ``head(encode(x))``).
        images: uint8 ``[N, H, W, 3]``.
        labels: uint8 ``[N, H, W]`` train ids, 255 = ignore.
        config: Training settings.
        device: ``auto``, ``cpu`` or ``cuda``.
        val_images: Optional validation images; their mIoU is logged every ``val_every``
            epochs and after the last.
        val_labels: Their labels.
        val_every: Epochs between validations (validation never changes the training).
        log_dir: TensorBoard directory for ``segmenter/loss`` and ``segmenter/val_miou``.
        progress: Show a progress bar.
        weight_labels: Labels whose pixel frequencies set the class weights (default:
            ``labels``).

    Returns:
        One dict per epoch with ``loss`` (and ``val_miou`` in the epochs that validated).
    """
    if images.shape[:3] != labels.shape or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images must be [N, H, W, 3] and labels [N, H, W]; got {images.shape}, {labels.shape}"
        )
    if config.crop is not None and config.crop > min(images.shape[1:3]):
        raise ValueError(
            f"crop {config.crop} is larger than the {images.shape[1]}x{images.shape[2]} images"
        )
    if val_every < 1:
        raise ValueError(f"val_every must be at least 1, got {val_every}")
    device = resolve_device(device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model.to(device).train()
    num_classes = cast("Segmenter", model).num_classes
    weights = torch.from_numpy(
        class_weights(
            labels if weight_labels is None else weight_labels,
            num_classes,
            config.class_weighting,
            config.max_class_weight,
        )
    ).to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE_INDEX)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps_per_epoch = max(1, -(-len(images) // config.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, config.epochs * steps_per_epoch)
    )
    writer = _summary_writer(log_dir)
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.epochs), desc="segmenter", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        order = rng.permutation(len(images))
        total, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            batch_images, batch_labels = images[batch], labels[batch]
            if config.crop is not None:
                batch_images, batch_labels = _random_windows(
                    batch_images, batch_labels, config.crop, rng
                )
            x = to_tensor(batch_images, device)
            y = torch.from_numpy(batch_labels.astype(np.int64)).to(device)
            flip = torch.from_numpy(rng.random(len(batch)) < 0.5).to(device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None], y.flip(-1), y)
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                continue  # a batch of ignore-only labels has no pixel to learn from
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        record = {"loss": total / max(seen, 1)}
        validate = (epoch + 1) % val_every == 0 or epoch + 1 == config.epochs
        if validate and val_images is not None and val_labels is not None and len(val_images):
            iou = segment_iou(model, val_images, val_labels, device=device)
            record["val_miou"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
        history.append(record)
        bar.set_postfix({k: f"{v:.3f}" for k, v in record.items()})
        if writer is not None:
            for key, value in record.items():
                writer.add_scalar(f"segmenter/{key}", value, epoch + 1)
    if writer is not None:
        writer.close()
    model.eval()
    return history


def _random_windows(
    images: np.ndarray, labels: np.ndarray, side: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One random ``side`` x ``side`` window of each image and of its label."""
    height, width = images.shape[1:3]
    tops = rng.integers(0, height - side + 1, len(images))
    lefts = rng.integers(0, width - side + 1, len(images))
    windows = [np.s_[y : y + side, x : x + side] for y, x in zip(tops, lefts, strict=True)]
    return (
        np.stack([image[w] for image, w in zip(images, windows, strict=True)]),
        np.stack([label[w] for label, w in zip(labels, windows, strict=True)]),
    )


def _summary_writer(log_dir: str | os.PathLike[str] | None) -> Any:
    if log_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))


@torch.no_grad()
def predict_labels(
    model: nn.Module,
    images: np.ndarray,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 32,
) -> np.ndarray:
    """Deterministic (dropout off) arg-max labels ``[N, H, W]`` uint8."""
    device = resolve_device(device)
    model.to(device).eval()
    out = np.empty(images.shape[:3], dtype=np.uint8)
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size], device)
        out[start : start + batch_size] = model(x).argmax(1).to(torch.uint8).cpu().numpy()
    return out


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` int64 counts of (true, predicted) over pixels whose label is not 255."""
    valid = labels != IGNORE_INDEX
    index = labels[valid].astype(np.int64) * num_classes + predicted[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU; NaN where a class is neither present nor predicted."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def segment_iou(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 32,
) -> np.ndarray:
    """Per-class IoU ``[C]`` of the deterministic prediction (NaN where undefined)."""
    predicted = predict_labels(model, images, device=device, batch_size=batch_size)
    num_classes = cast("Segmenter", model).num_classes
    return iou_from_confusion(confusion_matrix(predicted, labels, num_classes))


def save_segmenter(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save the class, its constructor config and the weights, atomically."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("a segmenter needs a `config` dict of its constructor arguments to save")
    cls = type(model)
    state = {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "config": dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


SEGMENTER_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}
"""The segmenters a checkpoint may name, by the ``module:qualname`` :func:`save_segmenter`
records. A checkpoint is data: it may pick one of these, never have a module imported."""


def register_segmenter(cls: type[nn.Module]) -> type[nn.Module]:
    """Allow checkpoints to build ``cls`` (your own segmenter class; its code will run).

    The package's own :class:`~misical_gym.segmenter.SmallUNet` is registered already. Call
    this, in your own code, before loading a checkpoint of your class (``prepare(model=...)``
    calls it for the model it is given). Usable as a class decorator.
    """
    SEGMENTER_ARCHITECTURES[f"{cls.__module__}:{cls.__qualname__}"] = cls
    return cls


def load_segmenter(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a segmenter saved by :func:`save_segmenter`, in eval mode.

    The checkpoint is read with ``weights_only=True`` and may only name a class of
    :data:`SEGMENTER_ARCHITECTURES`: a checkpoint naming anything else (``os:system``, say) is
    refused, so loading one runs no code from it.

    Raises:
        StoreError: the checkpoint is not one :func:`save_segmenter` writes, or names a class
            that is not registered.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise StoreError(f"{path}: not a segmenter checkpoint ({exc})") from exc
    if not (
        isinstance(state, dict)
        and isinstance(state.get("class"), str)
        and isinstance(state.get("config"), dict)
        and all(isinstance(k, str) for k in state["config"])
        and isinstance(state.get("state_dict"), dict)
    ):
        raise StoreError(f"{path}: not a segmenter checkpoint (class, config and state_dict)")
    factory = SEGMENTER_ARCHITECTURES.get(state["class"])
    if factory is None:
        raise StoreError(
            f"{path}: the checkpoint names segmenter class {state['class']!r:.100}, which is not "
            f"a known architecture ({', '.join(SEGMENTER_ARCHITECTURES)}); refusing to import "
            "it. If it is your own class, call misical_gym.segmenter.register_segmenter(YourClass) "
            "in your code first: that runs your code, so do it only for checkpoints you trust."
        )
    try:
        model = factory(**state["config"])
        model.load_state_dict(state["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise StoreError(f"{path}: the checkpoint does not fit {state['class']}: {exc}") from exc
    return model.to(resolve_device(device)).eval()


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """The training settings as a plain dict (for manifests and run configs).

    ``crop`` is left out when it is None, so the record of a whole-image run, and the
    ``prepare`` cache key built from it, are what they were before crops existed.
    """
    out = asdict(config)
    if out["crop"] is None:
        del out["crop"]
    return out
