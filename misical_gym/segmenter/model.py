"""The default segmenter: a small U-Net whose only dropout sits in its 1x1 head."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Segmenter(Protocol):
    """What the package reads of a segmenter module beyond ``nn.Module``'s own interface.

    ``nn.Module`` types the attributes it does not know as tensors or submodules, so code that
    calls these on a module given as ``nn.Module`` views it through this protocol.
    """

    num_classes: int

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def head(self, z: torch.Tensor) -> torch.Tensor: ...


DEFAULT_LEVELS = 3
""":class:`SmallUNet`'s resolution levels unless told otherwise, the synthetic world's."""
MAX_LEVELS, MAX_WIDTH = 8, 1024
"""The most resolution levels (a 128x smaller bottom) and first-level channels
:class:`SmallUNet` builds: a checkpoint's config is data, and a forged one must not make it
build a network of any size."""
_MAX_CHANNEL_FACTOR = 8
"""The lowest levels' channels stop doubling at this multiple of the first level's."""


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """A small U-Net, split for cheap MC dropout.

    ``encode(x) -> z`` runs the whole encoder-decoder once; ``head(z) -> logits`` is dropout
    followed by a 1x1 convolution, so MC dropout samples only the head. Skip connections keep
    thin objects (2-3 px strokes) segmentable, which a plain strided network loses. Each level
    halves the resolution and doubles the channels, up to ``8 * width``; more levels see more
    context (a wider receptive field) for little more compute, since the lower levels are small.

    Any module with ``encode``, ``head`` and ``num_classes`` (a :class:`Segmenter`) can replace
    it.

    Args:
        num_classes: Output classes C.
        width: Channels of the first level, 1 to :data:`MAX_WIDTH`.
        dropout: Dropout rate in the head, the only stochastic layer.
        levels: Resolution levels, 2 to :data:`MAX_LEVELS`.
    """

    def __init__(
        self,
        num_classes: int,
        width: int = 16,
        dropout: float = 0.3,
        levels: int = DEFAULT_LEVELS,
    ) -> None:
        super().__init__()
        if not 1 <= width <= MAX_WIDTH:
            raise ValueError(f"width must be at least 1 and at most {MAX_WIDTH}, got {width}")
        if not 2 <= levels <= MAX_LEVELS:
            raise ValueError(f"levels must be at least 2 and at most {MAX_LEVELS}, got {levels}")
        self.num_classes = num_classes
        self.config: dict[str, int | float] = {
            "num_classes": num_classes,
            "width": width,
            "dropout": dropout,
        }
        # Left out at the default, so that older checkpoints rebuild as they were.
        if levels != DEFAULT_LEVELS:
            self.config["levels"] = levels
        self.levels = levels
        channels = [width * min(2**i, _MAX_CHANNEL_FACTOR) for i in range(levels)]
        # Named enc1..encL, then up(L-1), dec(L-1) down to up1, dec1: the order the layers are
        # built in, so that a default network draws the initial weights it always has.
        for i, out_channels in enumerate(channels, 1):
            self.add_module(f"enc{i}", _block(3 if i == 1 else channels[i - 2], out_channels))
        for i in range(levels - 1, 0, -1):
            below, here = channels[i], channels[i - 1]
            self.add_module(f"up{i}", nn.ConvTranspose2d(below, here, 2, stride=2))
            self.add_module(f"dec{i}", _block(2 * here, here))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` images scaled to [0, 1] -> ``[B, width, H, W]`` features."""
        x = x - 0.5
        h, w = x.shape[-2:]
        # Pad to a multiple of 2^(levels-1) so the poolings and their transposes line up; crop
        # at the end.
        multiple = 2 ** (self.levels - 1)
        pad_h, pad_w = (-h) % multiple, (-w) % multiple
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for i in range(1, self.levels + 1):
            x = self.get_submodule(f"enc{i}")(x if i == 1 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for i in range(self.levels - 1, 0, -1):
            up, dec = self.get_submodule(f"up{i}"), self.get_submodule(f"dec{i}")
            x = dec(torch.cat([up(x), skips[i - 1]], dim=1))
        return x[..., :h, :w]

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Features -> ``[B, C, H, W]`` logits (stochastic when dropout is in train mode)."""
        return self.classifier(self.dropout(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))
