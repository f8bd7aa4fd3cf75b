"""Registers the MiSiCAL environments with Gymnasium (idempotent; imports no torch)."""

from __future__ import annotations

import gymnasium as gym

ENV_IDS: dict[str, dict[str, object]] = {
    "MiSiCAL-CamVid": {"store_name": "camvid"},
    "MiSiCAL-COCO10k": {"store_name": "coco10k"},
    "MiSiCAL-Synthetic": {"store_name": "synthetic"},
    # Any prepared store: gym.make("MiSiCAL-Store", root="path/to/store").
    "MiSiCAL-Store": {},
}


def register_envs() -> None:
    """Register every id in :data:`ENV_IDS`; ids that are already registered are left alone."""
    for env_id, kwargs in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="misical_gym.envs:MiSiCALEnv",
            vector_entry_point="misical_gym.envs:MiSiCALVectorEnv",
            kwargs=dict(kwargs),
            disable_env_checker=False,
        )
