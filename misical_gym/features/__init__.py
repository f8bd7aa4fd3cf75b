"""MC-dropout patch features and oracle counts (imports torch)."""

from __future__ import annotations

from misical_gym.features.mc_dropout import (
    EXTRA_METRICS,
    PixelMaps,
    binary_entropy,
    enable_mc_dropout,
    entropy,
    mc_patch_features,
    mc_pixel_maps,
    mc_pixel_statistics,
    patch_class_counts,
)

__all__ = [
    "EXTRA_METRICS",
    "PixelMaps",
    "binary_entropy",
    "enable_mc_dropout",
    "entropy",
    "mc_patch_features",
    "mc_pixel_maps",
    "mc_pixel_statistics",
    "patch_class_counts",
]
