"""The frozen segmenter: a small U-Net with an MC-dropout head, its training and checkpoints.

Importing this package imports torch; nothing in the environment path does.
"""

from __future__ import annotations

from misical_gym.segmenter.model import SmallUNet
from misical_gym.segmenter.training import (
    CLASS_WEIGHTINGS,
    SEGMENTER_ARCHITECTURES,
    TrainConfig,
    class_weights,
    confusion_matrix,
    iou_from_confusion,
    load_segmenter,
    predict_labels,
    register_segmenter,
    save_segmenter,
    segment_iou,
    train_segmenter,
)

register_segmenter(SmallUNet)

__all__ = [
    "CLASS_WEIGHTINGS",
    "SEGMENTER_ARCHITECTURES",
    "SmallUNet",
    "TrainConfig",
    "class_weights",
    "confusion_matrix",
    "iou_from_confusion",
    "load_segmenter",
    "predict_labels",
    "register_segmenter",
    "save_segmenter",
    "segment_iou",
    "train_segmenter",
]
