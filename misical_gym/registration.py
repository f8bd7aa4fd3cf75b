"""Registers the MiSiCAL environments with Gymnasium (idempotent; imports no torch).

Registration is also where the offline default is made: the ``MiSiCAL-Synthetic`` entry points
prepare the synthetic store on first use, so the environments themselves only ever open a
store and never train a segmenter.
"""

from __future__ import annotations

import sys
from typing import Any

import gymnasium as gym

ENV_IDS: dict[str, dict[str, object]] = {
    "MiSiCAL-CamVid": {"store_name": "camvid"},
    "MiSiCAL-COCO10k": {"store_name": "coco10k"},
    "MiSiCAL-Synthetic": {"store_name": "synthetic"},
    # Any prepared store: gym.make("MiSiCAL-Store", root="path/to/store").
    "MiSiCAL-Store": {},
}

_ENTRY_POINTS: dict[str, tuple[str, str]] = {
    # The offline default prepares its store on first use, then builds the usual envs.
    "MiSiCAL-Synthetic": (
        "misical_gym.registration:synthetic_env",
        "misical_gym.registration:synthetic_vector_env",
    ),
}
_DEFAULT_ENTRY_POINTS = ("misical_gym.envs:MiSiCALEnv", "misical_gym.envs:MiSiCALVectorEnv")


def register_envs() -> None:
    """Register every id in :data:`ENV_IDS`; ids that are already registered are left alone."""
    for env_id, kwargs in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        single, vector = _ENTRY_POINTS.get(env_id, _DEFAULT_ENTRY_POINTS)
        gym.register(
            id=env_id,
            entry_point=single,
            vector_entry_point=vector,
            kwargs=dict(kwargs),
            disable_env_checker=False,
        )


def ensure_synthetic_store(kwargs: dict[str, Any]) -> None:
    """Prepare the default synthetic store when ``kwargs`` ask for it and it is missing.

    Offline and deterministic, a few minutes with progress bars; a store given by ``root`` is
    left alone.
    """
    if kwargs.get("root") is not None or kwargs.get("store_name") != "synthetic":
        return
    from misical_gym.paths import default_store_path
    from misical_gym.store import MANIFEST

    path = default_store_path("synthetic")
    if (path / MANIFEST).is_file():
        return
    print(
        f"misical: preparing the synthetic feature store at {path} (first use only)",
        file=sys.stderr,
    )
    from misical_gym.prepare import prepare_synthetic  # torch only on this one-off path

    prepare_synthetic(out=path)


def synthetic_env(**kwargs: Any) -> gym.Env:
    """``MiSiCAL-Synthetic``: a :class:`~misical_gym.envs.MiSiCALEnv` on the synthetic store."""
    from misical_gym.envs import MiSiCALEnv

    ensure_synthetic_store(kwargs)
    return MiSiCALEnv(**kwargs)


def synthetic_vector_env(**kwargs: Any) -> gym.vector.VectorEnv:
    """The native vector env of ``MiSiCAL-Synthetic``."""
    from misical_gym.envs import MiSiCALVectorEnv

    ensure_synthetic_store(kwargs)
    return MiSiCALVectorEnv(**kwargs)
