"""Shared fixtures: tiny feature stores written once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from misical_gym.data.classes import COCO_STUFF_CLASSES
from misical_gym.store import FeatureStore
from misical_gym.testing import write_random_store


@pytest.fixture(scope="session", autouse=True)
def sb3_logdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """SB3 models learning without a log folder log to ``$SB3_LOGDIR``, else to a new
    ``SB3-<date>`` folder in the system's temp directory: keep those inside pytest's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3")))
        yield


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    """8 classes, 40 images x 16 patches: a few hundred patches per split."""
    return write_random_store(tmp_path_factory.mktemp("stores") / "tiny", num_images=40, seed=0)


@pytest.fixture(scope="session")
def coco_shaped_store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    """COCO-Stuff's 171 classes (so ``skis`` exists) over a few images."""
    return write_random_store(
        tmp_path_factory.mktemp("stores") / "coco10k",
        num_images=24,
        class_names=COCO_STUFF_CLASSES,
        seed=1,
    )


@pytest.fixture(scope="session")
def saved_ddqn_run(tiny_store: FeatureStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a DDQN trained briefly on ``tiny_store`` (budget 8, K = 8)."""
    from misical_gym.train import run_training

    return run_training(
        "ddqn",
        "MiSiCAL-Store",
        env_kwargs={"root": str(tiny_store.path), "budget": 8, "pool_size": 8},
        target="class3",
        steps=100,
        logdir=tmp_path_factory.mktemp("ddqn-run"),
        hyperparams={"learning_starts": 20, "batch_size": 8},
        device="cpu",
        eval_episodes=1,
        progress=False,
    ).run_dir


@pytest.fixture()
def misical_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$MISICAL_HOME`` so no test reads or writes the user's cache."""
    monkeypatch.setenv("MISICAL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
