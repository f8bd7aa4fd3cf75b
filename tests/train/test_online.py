"""``misical train --resume RUN --online-steps N``: a saved policy updated on the labelled pool."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from misical_gym.cli import main
from misical_gym.store import FeatureStore
from misical_gym.testing import write_random_store
from misical_gym.train.run import run_training
from misical_gym.train.select import load_policy

SMALL = {
    "ddqn": {"learning_starts": 20, "batch_size": 8},
    "dqn": {"learning_starts": 20, "batch_size": 8},
}


@pytest.fixture
def trained(tmp_path, request) -> tuple[FeatureStore, object]:
    agent = request.param
    store = write_random_store(tmp_path / "s", num_images=30, seed=0, unlabelled_pool=0.7)
    run = run_training(
        agent,
        "MiSiCAL-Store",
        env_kwargs={"root": str(store.path), "budget": 6},
        target="class2",
        pretrain_steps=60,
        online_steps=12,
        seed=1,
        logdir=tmp_path / "runs",
        hyperparams=SMALL[agent],
        device="cpu",
        eval_episodes=2,
        progress=False,
        threads=1,
    )
    return store, run


def label_half_the_unknown(store: FeatureStore) -> int:
    """Reveal (as an annotator would) half of the unlabelled pool patches; return how many."""
    unknown = store.split_ids("pool", labelled=False)
    chosen = unknown[: unknown.size // 2]
    labelled, counts = np.array(store.labelled), np.array(store.counts)
    labelled[chosen] = True
    counts[chosen, 2] = 3
    store.update(labelled=labelled, counts=counts)
    return int(store.split_ids("pool", labelled=True).size + chosen.size)


@pytest.mark.parametrize("trained", sorted(SMALL), indirect=True)
def test_resume_updates_the_policy_on_the_patches_labelled_so_far(trained, capsys) -> None:
    store, run = trained
    known = label_half_the_unknown(store)
    argv = ["train", "--resume", str(run.run_dir), "--online-steps", "30", "--threads", "1"]
    assert main([*argv, "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    out = run.run_dir.with_name(f"{run.run_dir.name}_online30")
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["labelled_pool_patches"] == known
    assert summary["resumed_from"] == str(run.run_dir) and summary["timesteps"] == 60 + 12 + 30
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["phases"][-1] == {"split": "pool", "steps": 30}
    # The policy changed, and the original run is untouched.
    import gymnasium as gym

    env = gym.make("MiSiCAL-Store", root=str(store.path), split="pool", budget=6)
    obs = np.stack([env.reset(seed=s)[0] for s in range(8)])
    before, after = load_policy(str(run.run_dir), env, "cpu"), load_policy(str(out), env, "cpu")
    rows = obs.reshape(8, 32, -1)
    assert not np.allclose(before.scores(rows), after.scores(rows))
    assert (run.run_dir / "summary.json").read_text() == json.dumps(run.summary, indent=1)
    # Again into the same folder: refused, nothing replaced.
    assert main([*argv, "--device", "cpu"]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("agent", ["presence", "supervised"])
def test_resume_refuses_what_does_not_learn_online_and_a_missing_run(tmp_path, capsys, agent):
    store = write_random_store(tmp_path / "s", num_images=8)
    run = run_training(
        agent,
        "MiSiCAL-Store",
        env_kwargs={"root": str(store.path), "budget": 4},
        target="class1",
        steps=8,
        logdir=tmp_path / "runs",
        eval_episodes=1,
        progress=False,
    )
    assert main(["train", "--resume", str(run.run_dir), "--online-steps", "5"]) == 2
    assert "--resume continues ddqn" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--online-steps", "5"]) == 2
    assert "not a complete run" in capsys.readouterr().err
    assert main(["train", "--resume", str(run.run_dir)]) == 2
    assert "--online-steps" in capsys.readouterr().err
