"""The packaged SB3 hyperparameter files, read and run by rl-zoo3 itself."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
from importlib import resources

import pytest

ZOO_ALGOS = ("dqn", "qrdqn", "ppo", "a2c")
# Few steps and small buffers, so a run takes seconds: rl-zoo3's --hyperparams overrides.
FAST = {
    "dqn": ["learning_starts:20", "buffer_size:500", "batch_size:16"],
    "qrdqn": ["learning_starts:20", "buffer_size:500", "batch_size:16"],
    "ppo": ["n_steps:32", "batch_size:16", "n_epochs:1"],
    "a2c": ["n_steps:8"],
}


def packaged(algo: str) -> str:
    return str(resources.files("misical_gym.train") / "hyperparams" / f"{algo}.yml")


@pytest.mark.parametrize("env_id", ["MiSiCAL-Synthetic", "MiSiCAL-Store"])
@pytest.mark.parametrize("algo", ZOO_ALGOS)
def test_rl_zoo3_reads_the_packaged_files(algo, env_id, tmp_path) -> None:
    from rl_zoo3.exp_manager import ExperimentManager
    from rl_zoo3.utils import ALGOS

    import misical_gym  # noqa: F401  (registers the ids, as --gym-packages does)

    manager = ExperimentManager(
        argparse.Namespace(), algo, env_id, str(tmp_path), config=packaged(algo), verbose=0
    )
    hyperparams, _ = manager.read_hyperparameters()
    hyperparams, *_ = manager._preprocess_hyperparams(hyperparams)
    assert manager.n_timesteps == 10_000
    # What is left goes to the algorithm's constructor as it is.
    assert hyperparams["policy"] == "MlpPolicy"
    assert set(hyperparams) <= set(inspect.signature(ALGOS[algo].__init__).parameters)


# About 9 s each (the README's rl-zoo3 example runs DQN in the default suite). Loading an
# n-step model back makes SB3 warn that n_steps is ignored; the buffer it saved is n-step.
@pytest.mark.slow
@pytest.mark.filterwarnings(r"ignore:`n_steps=\d+` is ignored:UserWarning")
@pytest.mark.parametrize("algo", ZOO_ALGOS)
def test_rl_zoo3_trains_with_the_packaged_file(algo, tiny_store, tmp_path) -> None:
    argv = [
        *("--algo", algo, "--env", "MiSiCAL-Store", "--gym-packages", "misical_gym"),
        *("-conf", packaged(algo), "-n", "100", "-f", str(tmp_path), "--seed", "0"),
        *("--num-threads", "1", "--eval-freq", "-1", "--device", "cpu"),
        *("--env-kwargs", f"root:'{tiny_store.path}'", "budget:8", "pool_size:8"),
        *("--hyperparams", *FAST[algo]),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "rl_zoo3.train", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / algo / "MiSiCAL-Store_1" / "MiSiCAL-Store.zip").is_file()
    from rl_zoo3.utils import ALGOS

    model = ALGOS[algo].load(tmp_path / algo / "MiSiCAL-Store_1" / "MiSiCAL-Store.zip")
    assert model.action_space.n == 8  # --env-kwargs reached the env
    assert model.num_timesteps >= 100
