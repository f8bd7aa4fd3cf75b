"""Per-patch MC-dropout features: BALD, predictive entropy, class presence, class-BALD.

The encoder runs once per image and only the head is sampled ``T`` times. Over the samples we
keep running means (class probabilities, pixel entropy and per-class binary entropy), never the
``T`` probability maps themselves, and pool them per patch at the head's resolution.

The head runs on encoder features average-pooled by ``stride`` (4 by default in ``prepare``).
The per-sample statistics (a softmax, an entropy and C binary entropies per pixel) cost far more
than a 1x1 head, so this is where the time goes: at stride 1, head-only MC costs about 14
deterministic passes, at stride 2 about 3.6, at stride 4 about 1.4. At stride 4 a 64-px
synthetic image keeps 4x4 head pixels per patch. Measured against stride 1 (the default
segmenter trained by ``prepare``, 1,500 images of an unseen world seed, T=20): presence columns
correlate at 0.9995 (mean absolute difference 0.002), class-BALD at 0.991, BALD mean at 0.96,
predictive entropy at 0.98, and BALD max at 0.83 (a maximum over 16 instead of 256 pixels).
The average precision of finding a rare class changes by at most 3.5% with a "context and
look-alike" presence score; the rare class's own presence score, near chance either way, drops
from 0.014 to 0.012 for skis.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn

from misical_gym.data.classes import IGNORE_INDEX
from misical_gym.data.patches import PatchGrid
from misical_gym.layout import FeatureLayout

if TYPE_CHECKING:
    from misical_gym.segmenter.model import Segmenter

_EPS = 1e-12


def entropy(p: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) of probability vectors along ``dim``."""
    return -(p * torch.log(p.clamp_min(_EPS))).sum(dim)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Element-wise binary entropy (nats) of probabilities ``p``."""
    return -(p * torch.log(p.clamp_min(_EPS)) + (1 - p) * torch.log((1 - p).clamp_min(_EPS)))


def enable_mc_dropout(model: nn.Module) -> None:
    """Eval mode everywhere (BatchNorm frozen) except dropout layers, which keep sampling."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()


@torch.no_grad()
def mc_pixel_statistics(
    model: nn.Module, x: torch.Tensor, samples: int, stride: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stream ``samples`` head passes over one encoder pass (features pooled by ``stride``).

    Returns:
        ``mean_p`` ``[B, C, h, w]`` (mean class probabilities), ``bald`` ``[B, h, w]`` =
        H[mean p] - mean H[p], and ``class_bald`` ``[B, C, h, w]`` = H_b(mean p_c) -
        mean H_b(p_c), all at the head's resolution; BALD terms are clipped at 0 against
        round-off.
    """
    if samples < 1:
        raise ValueError(f"the number of MC samples must be at least 1, got {samples}")
    if stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    enable_mc_dropout(model)
    segmenter = cast("Segmenter", model)
    z = segmenter.encode(x)
    if stride > 1:
        h, w = z.shape[-2:]
        z = nn.functional.adaptive_avg_pool2d(z, (max(h // stride, 1), max(w // stride, 1)))

    def sample() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One head pass: class probabilities, their p log p, per-class binary entropies."""
        # From log-probabilities: p log p and (1-p) log(1-p) cost one exp and one log1p, the
        # most expensive part of the loop (the head itself is a 1x1 convolution).
        log_p = torch.log_softmax(segmenter.head(z), dim=1)
        p = log_p.exp()
        p_log_p = p * log_p
        return p, p_log_p, -(p_log_p + (1 - p) * torch.log1p(-p.clamp_max(1 - 1e-7)))

    mean_p, p_log_p, mean_binary = sample()
    mean_entropy = -p_log_p.sum(1)
    for _ in range(samples - 1):
        p, p_log_p, binary = sample()
        mean_p += p
        mean_entropy -= p_log_p.sum(1)
        mean_binary += binary
    mean_p /= samples
    mean_entropy /= samples
    mean_binary /= samples
    bald = (entropy(mean_p) - mean_entropy).clamp_min(0)
    class_bald = (binary_entropy(mean_p) - mean_binary).clamp_min(0)
    return mean_p, bald, class_bald


@torch.no_grad()
def mc_patch_features(
    model: nn.Module, x: torch.Tensor, grid: PatchGrid, samples: int, stride: int = 1
) -> np.ndarray:
    """float32 ``[B, rows*cols, 3 + 2C]`` features in the store's column order.

    Columns: bald_mean, bald_max, entropy_mean, presence per class (mean probability over the
    patch), class-BALD per class (patch mean). The grid is laid over the head's output, whose
    patches cover the same image regions as the full-resolution grid up to rounding.
    """
    mean_p, bald, class_bald = mc_pixel_statistics(model, x, samples, stride)
    predictive = entropy(mean_p)
    num_classes = mean_p.shape[1]
    ys, xs = grid.edges(*mean_p.shape[-2:])
    # Positional names only: the layout's columns are the same for any class names.
    layout = FeatureLayout.positional(num_classes)
    presence, class_bald_columns = layout.presence, layout.class_bald
    out = torch.empty((x.shape[0], grid.num_patches, layout.num_columns), device=x.device)
    for index in range(grid.num_patches):
        r, c = divmod(index, grid.cols)
        window = (slice(ys[r], ys[r + 1]), slice(xs[c], xs[c + 1]))
        b = bald[(slice(None), *window)]
        out[:, index, 0] = b.mean((-2, -1))
        out[:, index, 1] = b.amax((-2, -1))
        out[:, index, 2] = predictive[(slice(None), *window)].mean((-2, -1))
        out[:, index, presence] = mean_p[(slice(None), slice(None), *window)].mean((-2, -1))
        out[:, index, class_bald_columns] = class_bald[(slice(None), slice(None), *window)].mean(
            (-2, -1)
        )
    # Keep every column inside the bounds the store and the environment promise.
    out[..., : layout.num_global].clamp_(0.0, math.log(max(num_classes, 2)))
    out[..., presence].clamp_(0.0, 1.0)
    out[..., class_bald_columns].clamp_(0.0, math.log(2))
    return out.cpu().numpy()


def patch_class_counts(label: np.ndarray, grid: PatchGrid, num_classes: int) -> np.ndarray:
    """int64 ``[rows*cols, C]`` oracle pixel count of every class in every patch (255 ignored)."""
    patch = grid.patch_index_map(*label.shape)
    valid = label != IGNORE_INDEX
    if (label[valid] >= num_classes).any():
        raise ValueError(f"label values must be < {num_classes} or {IGNORE_INDEX}")
    index = patch[valid] * num_classes + label[valid]
    return np.bincount(index, minlength=grid.num_patches * num_classes).reshape(
        grid.num_patches, num_classes
    )
