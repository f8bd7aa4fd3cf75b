"""Fixtures of the adversarial suite: a store to damage and a training spy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from misical_gym.store import FeatureStore
from misical_gym.testing import write_random_store


@pytest.fixture()
def fresh_store(tmp_path: Path) -> FeatureStore:
    """A small valid store of this test's own, free to be damaged."""
    return write_random_store(tmp_path / "store", num_images=6, seed=3)


@pytest.fixture()
def no_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make segmenter training fail loudly; the checks under test must come before it."""
    calls: list[int] = []

    def train(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise AssertionError("the segmenter trained before the input was checked")

    monkeypatch.setattr("misical_gym.segmenter.train_segmenter", train)
    return calls
