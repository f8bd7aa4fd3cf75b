"""Where torch runs: the device and the CPU thread count, shared by the segmenter and the agents.

torch is imported inside the functions that need it, so importing this module stays light.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; ``"cuda"`` without a GPU is an error."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
    return torch.device(device)


def default_threads() -> int:
    """Half the CPU cores this process may use (at least one): the default torch thread count.

    The default segmenter's tensors are small (64-256 px images), so intra-op parallelism gains
    little even on idle cores (under 20% from 1 to 2 threads here), while threads that wait at
    every operation for a core another process holds run many times slower: on a shared 2-core
    machine, 2 threads trained 5-30x slower than 1. Half the cores leaves that headroom.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // 2)


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` torch CPU threads (``None``: :func:`default_threads`).

    The previous setting is restored afterwards, so a library call does not change the caller's.
    """
    import torch

    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
