"""misical-gym: class-targeted active learning for semantic segmentation as an RL benchmark.

Importing the package registers the Gymnasium environments ``MiSiCAL-CamVid``,
``MiSiCAL-COCO10k``, ``MiSiCAL-Synthetic`` and ``MiSiCAL-Store``. It is light on purpose: torch
is imported only when a segmenter is actually built, trained or run.
"""

from __future__ import annotations

from misical_gym.registration import ENV_IDS, register_envs

__version__ = "0.1.0"
__all__ = ["ENV_IDS", "__version__", "register_envs"]

register_envs()
