"""Fixtures shared by the evaluation's and the sweep's tests."""

from __future__ import annotations

import pytest

import misical_gym.train.evaluate as evaluate_module


@pytest.fixture()
def jobs_run(monkeypatch) -> list[dict]:
    """The jobs ``evaluate`` and ``sweep`` run from now on (in this process), in order."""
    jobs: list[dict] = []
    real = evaluate_module.run_job

    def recording(job):
        jobs.append(job)
        return real(job)

    monkeypatch.setattr(evaluate_module, "run_job", recording)
    return jobs


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny prepared synthetic store: images the retraining can read again."""
    from misical_gym.prepare import PrepareConfig, prepare_synthetic

    config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3, threads=1)
    out = tmp_path_factory.mktemp("prepared") / "synthetic"
    return prepare_synthetic(out, images=24, config=config, progress=False)
