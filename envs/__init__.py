"""Gymnasium environments of misical-gym (NumPy only: nothing here imports torch)."""

from __future__ import annotations

from misical_gym.envs.core import ObservationBuilder, RewardFunction, resolve_store
from misical_gym.envs.patch_selection import MiSiCALEnv
from misical_gym.envs.vector import MiSiCALVectorEnv

__all__ = [
    "MiSiCALEnv",
    "MiSiCALVectorEnv",
    "ObservationBuilder",
    "RewardFunction",
    "resolve_store",
]
