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
    """A three-level U-Net for small images, split for cheap MC dropout.

    ``encode(x) -> z`` runs the whole encoder-decoder once; ``head(z) -> logits`` is dropout
    followed by a 1x1 convolution, so MC dropout samples only the head. Skip connections keep
    thin objects (2-3 px strokes) segmentable, which a plain strided network loses.

    Any module with ``encode``, ``head`` and ``num_classes`` (a :class:`Segmenter`) can replace
    it.

    Args:
        num_classes: Output classes C.
        width: Channels of the first level (doubled at each of the two lower levels).
        dropout: Dropout rate in the head, the only stochastic layer.
    """

    def __init__(self, num_classes: int, width: int = 16, dropout: float = 0.3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.config = {"num_classes": num_classes, "width": width, "dropout": dropout}
        w = width
        self.enc1, self.enc2, self.enc3 = _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _block(2 * w, w)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(w, num_classes, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` images scaled to [0, 1] -> ``[B, width, H, W]`` features."""
        x = x - 0.5
        h, w = x.shape[-2:]
        # Pad to a multiple of 4 so both poolings and their transposes line up; crop at the end.
        pad_h, pad_w = (-h) % 4, (-w) % 4
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        e3 = self.enc3(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return d1[..., :h, :w]

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Features -> ``[B, C, H, W]`` logits (stochastic when dropout is in train mode)."""
        return self.classifier(self.dropout(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))
