"""Model files are data: loading a policy never runs code that the file names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from misical_gym.agents.ddqn import DDQN
from misical_gym.cli import main


class _Payload:
    """Unpickling this object creates ``marker``: the proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _malicious_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "policy.zip"
    torch.save({"version": 2, "config": _Payload(marker)}, path)
    return path, marker


def test_ddqn_load_refuses_a_pickled_object_without_running_it(tmp_path) -> None:
    path, marker = _malicious_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="read as data only"):
        DDQN.load(path)
    assert not marker.exists()


def test_ddqn_load_replay_buffer_refuses_a_pickled_object(tmp_path, tiny_store) -> None:
    import gymnasium as gym

    path, marker = _malicious_checkpoint(tmp_path)
    model = DDQN(gym.make("MiSiCAL-Store", root=str(tiny_store.path)))
    with pytest.raises(Exception, match="Weights only load failed"):
        model.load_replay_buffer(path)
    assert not marker.exists()


def test_select_with_a_malicious_policy_file_runs_nothing(tmp_path, tiny_store, capsys) -> None:
    path, marker = _malicious_checkpoint(tmp_path)
    argv = ["select", "--store", str(tiny_store.path), "--policy", str(path)]
    argv += ["--target", "class1", "--budget", "3", "--out", str(tmp_path / "picks.json")]
    assert main(argv) == 2
    assert not marker.exists()
    assert "not a model this package can load" in capsys.readouterr().err


def test_a_saved_ddqn_holds_only_data(tmp_path, tiny_store) -> None:
    import gymnasium as gym

    env = gym.make("MiSiCAL-Store", root=str(tiny_store.path))
    model = DDQN(env, learning_starts=5, batch_size=4, seed=0).learn(12)
    path = model.save(tmp_path / "model", include_replay_buffer=True)
    torch.load(path, weights_only=True)  # raises if anything in it needs unpickling
    loaded = DDQN.load(path, env=env)
    assert loaded.state == model.state and loaded.config == model.config
