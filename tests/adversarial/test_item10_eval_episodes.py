"""Item 10: ``--eval-episodes`` below 1 is refused up front; no NaN reaches summary.json."""

from __future__ import annotations

import pytest

from misical_gym.cli import main
from misical_gym.train.run import run_training


@pytest.mark.parametrize("episodes", [0, -3])
def test_item10_eval_episodes_below_one_are_refused(tiny_store, tmp_path, capsys, episodes):
    argv = ["train", "--agent", "random", "--env", "MiSiCAL-Store", "--steps", "4"]
    argv += ["--env-kwargs", f"root={tiny_store.path}", "budget=4", "pool_size=8"]
    argv += ["--logdir", str(tmp_path / "runs"), "--eval-episodes", str(episodes)]
    assert main(argv) == 2
    assert "--eval-episodes must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match="eval-episodes"):
        run_training(
            "random",
            "MiSiCAL-Store",
            env_kwargs={"root": str(tiny_store.path)},
            steps=4,
            logdir=tmp_path / "runs",
            eval_episodes=episodes,
        )
