"""``misical train`` / ``run_training``: every agent, TensorBoard keys, run files, bad flags."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from misical_gym.cli import main
from misical_gym.train import AGENTS, load_agent, make_agent, run_training
from misical_gym.train.agents import (
    HEURISTIC_AGENTS,
    check_hyperparams,
    default_hyperparams,
    split_experiment,
)

torch.set_num_threads(1)
FAST = {
    "ddqn": {"learning_starts": 50, "batch_size": 16, "buffer_size": 1000},
    "ddqn-plain": {"learning_starts": 50, "batch_size": 16, "buffer_size": 1000},
    "dqn": {"learning_starts": 50, "batch_size": 16, "buffer_size": 1000},
    "qrdqn": {"learning_starts": 50, "batch_size": 16, "buffer_size": 1000},
    "ppo": {"n_steps": 64, "batch_size": 32, "n_epochs": 1},
    "maskable-ppo": {"n_steps": 64, "batch_size": 32, "n_epochs": 1},
    "a2c": {"n_steps": 8},
}
COMMON_KEYS = {
    "rollout/ep_rew_mean",
    "rollout/ep_len_mean",
    "time/fps",
    "al/target_pixels",
    "al/hit_rate",
}
EXTRA_KEYS = {
    "ddqn": {"train/loss", "rollout/exploration_rate"},
    "ddqn-plain": {"train/loss", "rollout/exploration_rate"},
    "dqn": {"train/loss", "rollout/exploration_rate"},
    "qrdqn": {"train/loss", "rollout/exploration_rate"},
    "ppo": {"train/loss"},
    "maskable-ppo": {"train/loss"},
    "a2c": {"train/loss", "train/policy_loss"},
    "supervised": {"train/loss"},
}
"""Heuristics learn nothing: they log the common keys and no ``train/loss``."""


def env_kwargs(store) -> dict:
    return {"root": str(store.path), "budget": 8, "pool_size": 8}


def scalars(run_dir: Path) -> EventAccumulator:
    (events,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return accumulator


@pytest.mark.parametrize("agent", [a for a in AGENTS])
def test_every_agent_trains_logs_and_summarises(agent, tiny_store, tmp_path) -> None:
    run_dir = run_training(
        agent,
        "MiSiCAL-Store",
        env_kwargs=env_kwargs(tiny_store),
        target="class3",
        pretrain_steps=240,
        online_steps=80,
        seed=0,
        logdir=tmp_path,
        hyperparams=FAST.get(agent, {}),
        device="cpu",
        eval_episodes=3,
        progress=False,
    ).run_dir
    assert run_dir == tmp_path / "MiSiCAL-Store" / "class3" / f"{agent}_0"
    tags = set(scalars(run_dir).Tags()["scalars"])
    assert COMMON_KEYS | EXTRA_KEYS.get(agent, set()) <= tags, sorted(tags)
    assert ("train/loss" in tags) == (agent not in HEURISTIC_AGENTS)
    if agent == "a2c":  # the whole loss A2C minimises, from the parts SB3 logs
        a2c = load_agent("a2c", run_dir / "model.zip", None, "cpu").model
        parts = {
            k: scalars(run_dir).Scalars(f"train/{k}")[-1].value
            for k in ("policy_loss", "entropy_loss", "value_loss")
        }
        whole = (
            parts["policy_loss"]
            + a2c.ent_coef * parts["entropy_loss"]
            + a2c.vf_coef * parts["value_loss"]
        )
        assert scalars(run_dir).Scalars("train/loss")[-1].value == pytest.approx(whole, rel=1e-5)
    # Both phases are one curve: its last point is past the pretraining steps.
    assert max(e.step for e in scalars(run_dir).Scalars("rollout/ep_rew_mean")) > 240
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["phases"] == [{"split": "init", "steps": 240}, {"split": "pool", "steps": 80}]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["timesteps"] == 320 and 0 <= summary["hit_rate"] <= 1
    assert (run_dir / summary["model"]).is_file()


@pytest.mark.parametrize("agent", ["ddqn", "ddqn-goal", "dqn", "ppo", "supervised"])
def test_the_same_seed_trains_the_same_model(agent, tiny_store, tmp_path) -> None:
    # Both phases learn, so an unseeded pool phase would show in the weights and the summary.
    agent, target = ("ddqn", "random") if agent == "ddqn-goal" else (agent, "class3")
    runs = [
        run_training(
            agent,
            "MiSiCAL-Store",
            env_kwargs=env_kwargs(tiny_store),
            target=target,
            pretrain_steps=120,
            online_steps=120,
            seed=1,
            logdir=tmp_path / name,
            hyperparams=FAST.get(agent, {}),
            device="cpu",
            eval_episodes=2,
            progress=False,
        ).run_dir
        for name in ("a", "b")
    ]
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    env = gym.make("MiSiCAL-Store", target_class=target, **env_kwargs(tiny_store))
    models = [
        load_agent(agent, run / s["model"], env, device="cpu")
        for run, s in zip(runs, summaries, strict=True)
    ]
    networks = [
        next(getattr(m, n) for n in ("classifier", "q_net", "policy") if hasattr(m, n))
        for m in models
    ]
    for first, again in zip(networks[0].parameters(), networks[1].parameters(), strict=True):
        torch.testing.assert_close(first, again, rtol=0, atol=0)
    for summary in summaries:
        summary.pop("seconds")
    assert summaries[0] == summaries[1]


@pytest.mark.parametrize(
    "agent", ["ddqn", "dqn", "ppo", "maskable-ppo", "supervised", "presence", "random"]
)
def test_save_load_predict_gives_the_same_actions(agent, tiny_store, tmp_path) -> None:
    env = gym.make("MiSiCAL-Store", target_class="class3", **env_kwargs(tiny_store))
    params = {"seed": 0, **FAST.get(agent, {})}
    if agent not in ("random", "presence"):
        params["device"] = "cpu"
    model = make_agent(agent, env, **params).learn(200)
    observations, masks = [], []
    obs, _ = env.reset(seed=5)
    for _ in range(6):
        observations.append(obs)
        masks.append(env.unwrapped.action_masks())
        obs, *_ = env.step(0)
    path = model.save(tmp_path / "model")
    loaded = load_agent(
        agent, path if path is not None else tmp_path / "model.zip", env, device="cpu"
    )
    batch, batch_masks = np.stack(observations), np.stack(masks)
    if agent == "random":  # a seeded draw: equal seeds give equal picks
        first, _ = make_agent(agent, env, seed=0).predict(batch, action_masks=batch_masks)
        again, _ = loaded.predict(batch, action_masks=batch_masks)
    else:
        first, _ = model.predict(batch, deterministic=True, action_masks=batch_masks)
        again, _ = loaded.predict(batch, deterministic=True, action_masks=batch_masks)
    np.testing.assert_array_equal(first, again)
    assert batch_masks[np.arange(len(first)), first].all()


def test_masks_are_honoured_by_sb3_adapters(tiny_store) -> None:
    env = gym.make("MiSiCAL-Store", target_class="class3", **env_kwargs(tiny_store))
    obs, _ = env.reset(seed=0)
    for agent in ("dqn", "qrdqn", "ppo", "a2c"):
        model = make_agent(agent, env, device="cpu", seed=0)
        for allowed in range(8):
            mask = np.zeros(8, dtype=bool)
            mask[allowed] = True
            action, _ = model.predict(obs, action_masks=mask)
            assert action == allowed


@pytest.mark.parametrize("agent", AGENTS)
def test_packaged_hyperparameters_cover_both_envs_with_valid_keys(agent) -> None:
    learns = agent not in HEURISTIC_AGENTS
    for env_id in ("MiSiCAL-Synthetic", "MiSiCAL-COCO10k", "MiSiCAL-Store"):
        params = default_hyperparams(agent, env_id)
        assert bool(params) == learns, (agent, env_id)
        agent_params, experiment = split_experiment(params)
        check_hyperparams(agent, agent_params)
        assert experiment["n_timesteps"] == 10_000  # every learner, as rl-zoo3 needs


def test_ddqn_plain_is_the_ddqn_without_counterfactual_targets_or_relabelling(tiny_store) -> None:
    for env_id in ("MiSiCAL-Synthetic", "MiSiCAL-COCO10k"):
        plain, default = (
            default_hyperparams("ddqn-plain", env_id),
            default_hyperparams("ddqn", env_id),
        )
        assert plain == default | {"counterfactual_targets": False, "hindsight_fraction": 0.0}
    env = gym.make("MiSiCAL-Store", target_class="class3", **env_kwargs(tiny_store))
    config = make_agent("ddqn-plain", env, device="cpu").config
    assert not config.counterfactual_targets and config.hindsight_fraction == 0
    assert make_agent("ddqn", env, device="cpu").config.counterfactual_targets


def test_run_keys_of_a_file_are_defaults_under_the_arguments(tiny_store, tmp_path) -> None:
    file = tmp_path / "dqn.yml"
    entry = {"n_timesteps": 40, "env_kwargs": {"budget": 4, "pool_size": 6}, **FAST["dqn"]}
    file.write_text(yaml.safe_dump({"MiSiCAL-Store": entry}))
    run_dir = run_training(
        "dqn",
        "MiSiCAL-Store",
        env_kwargs={"root": str(tiny_store.path), "pool_size": 8},
        hyperparams_file=file,
        logdir=tmp_path / "runs",
        eval_episodes=1,
        progress=False,
    ).run_dir
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["phases"] == [{"split": "init", "steps": 40}]
    assert config["env_kwargs"] == {"budget": 4, "pool_size": 8, "root": str(tiny_store.path)}
    assert "n_timesteps" not in config["hyperparams"] and "env_kwargs" not in config["hyperparams"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"n_timesteps": -1}, "n_timesteps"),
        ({"n_timesteps": 2.5}, "n_timesteps"),
        ({"env_kwargs": [1]}, "env_kwargs"),
    ],
)
def test_bad_run_keys_are_clear_errors(entry, message) -> None:
    with pytest.raises(ValueError, match=message):
        split_experiment(entry)


def test_maskable_ppo_learns_with_the_envs_masks(tiny_store) -> None:
    from stable_baselines3.common.callbacks import BaseCallback

    class CountMasked(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.steps = self.masked = 0

        def _on_step(self) -> bool:
            self.steps += len(self.locals["infos"])
            self.masked += sum(bool(i["masked_action"]) for i in self.locals["infos"])
            return True

    # More slots than init patches: every step has empty, masked slots.
    env = gym.make(
        "MiSiCAL-Store", root=str(tiny_store.path), budget=8, pool_size=200, target_class=3
    )
    counts = {}
    for agent in ("maskable-ppo", "ppo"):
        callback = CountMasked()
        make_agent(agent, env, seed=0, device="cpu", **FAST[agent]).learn(128, callback=callback)
        counts[agent] = callback.masked
    assert counts["maskable-ppo"] == 0 and counts["ppo"] > 0, counts


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--agent", "sac"], "choose one of ddqn, ddqn-plain, dqn, qrdqn"),
        (["--env", "CartPole-v9"], "MiSiCAL-COCO10k"),
        (["--env", "CartPole-v1"], "choose one of MiSiCAL-COCO10k"),  # registered, not ours
        (["--env-kwargs", "bugdet=3"], "valid ones: root"),
        (["--target", "clas3"], "class3"),
        (["--env-kwargs", "budget"], "KEY=VALUE"),
        (["--steps", "-5"], "non-negative"),
    ],
)
def test_bad_flags_are_clear_errors(argv, message, tiny_store, tmp_path, capsys) -> None:
    base = {
        "--agent": "random",
        "--env": "MiSiCAL-Store",
        "--steps": "10",
        "--logdir": str(tmp_path),
    }
    args = dict(base)
    extra: list[str] = []
    for key, value in zip(argv[::2], argv[1::2], strict=True):
        if key in args:
            args[key] = value
        else:
            extra += [key, value]
    command = ["train", *[x for kv in args.items() for x in kv], *extra]
    if "--env-kwargs" not in extra:
        command += ["--env-kwargs", f"root={tiny_store.path}"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("misical: error:") and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_store, tmp_path, capsys) -> None:
    command = ["train", "--agent", "ddqn", "--env", "MiSiCAL-Store", "--device", "cuda"]
    command += ["--logdir", str(tmp_path), "--env-kwargs", f"root={tiny_store.path}"]
    assert main(command) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_bad_hyperparameter_value_is_a_clear_error(tiny_store, tmp_path, capsys) -> None:
    override = tmp_path / "hp.yml"
    override.write_text("default:\n  learning_rate: fast\n")
    for agent in ("ddqn", "dqn", "supervised"):
        command = ["train", "--agent", agent, "--env", "MiSiCAL-Store", "--steps", "10"]
        command += ["--logdir", str(tmp_path / "runs"), "--hyperparams", str(override)]
        assert main([*command, "--env-kwargs", f"root={tiny_store.path}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"misical: error: agent '{agent}' rejected its hyperparameters")
        assert "fast" in err
    assert not (tmp_path / "runs").exists()


def test_unknown_hyperparameter_lists_valid_keys_and_leaves_no_run(tiny_store, tmp_path) -> None:
    override = tmp_path / "hp.yml"
    override.write_text("MiSiCAL-Store:\n  learning_rat: 0.1\n")
    logdir = tmp_path / "runs"
    run = {
        "env_kwargs": env_kwargs(tiny_store),
        "target": "class3",
        "steps": 10,
        "logdir": logdir,
        "eval_episodes": 1,
        "progress": False,
    }
    with pytest.raises(ValueError, match=r"valid keys: .*learning_rate"):
        run_training("ddqn", "MiSiCAL-Store", hyperparams_file=override, **run)
    assert not (logdir / "MiSiCAL-Store" / "class3" / "ddqn_0").exists()
    # So the corrected command needs no --overwrite.
    override.write_text("MiSiCAL-Store:\n  learning_rate: 0.1\n")
    run_training("ddqn", "MiSiCAL-Store", hyperparams_file=override, device="cpu", **run)


def test_hyperparameter_files_and_env_kwargs_read_dotless_exponents_as_floats(tmp_path) -> None:
    from misical_gym.train.agents import load_hyperparams
    from misical_gym.train.run import parse_env_kwargs

    override = tmp_path / "hp.yml"
    override.write_text("default:\n  learning_rate: 1e-4\n  buffer_size: 5000\n")
    params = load_hyperparams("ddqn", "MiSiCAL-Store", override)
    assert params["learning_rate"] == 1e-4 and isinstance(params["learning_rate"], float)
    assert params["buffer_size"] == 5000 and isinstance(params["buffer_size"], int)
    assert parse_env_kwargs(["reward_values=[0,5e-1,1]", "budget=16"]) == {
        "reward_values": [0, 0.5, 1],
        "budget": 16,
    }
    assert yaml.safe_load("1e-4") == "1e-4"  # PyYAML's own loader is left as it is


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MiSiCAL-Synthtic:\n  learning_rate: 0.1\n", r"no entry for 'MiSiCAL-Store'.*Synthtic"),
        ("learning_rate: [0.1\n", "not valid YAML"),
        ("- learning_rate\n", "mapping"),
    ],
)
def test_bad_hyperparameter_files(text, message, tiny_store, tmp_path) -> None:
    override = tmp_path / "hp.yml"
    override.write_text(text)
    with pytest.raises(ValueError, match=message):
        run_training(
            "ddqn",
            "MiSiCAL-Store",
            env_kwargs=env_kwargs(tiny_store),
            steps=10,
            logdir=tmp_path,
            hyperparams_file=override,
            progress=False,
        )


def test_config_command_reproduces_the_run(tiny_store, tmp_path, capsys) -> None:
    override = tmp_path / "hp.yml"
    override.write_text("default:\n  hidden: 8\n")
    first = run_training(
        "supervised",
        "MiSiCAL-Store",
        env_kwargs={**env_kwargs(tiny_store), "reward": "binary"},
        target=3,
        pretrain_steps=60,
        online_steps=20,
        seed=2,
        logdir=tmp_path / "a",
        hyperparams_file=override,
        hyperparams={"patience": 2},  # set in Python: the command must carry it too
        device="cpu",
        eval_episodes=2,
        progress=False,
    ).run_dir
    config = yaml.safe_load((first / "config.yaml").read_text())
    assert config["target"] == "class3"
    assert config["hyperparams"]["hidden"] == 8 and config["hyperparams"]["patience"] == 2
    argv = shlex.split(config["command"])
    assert argv[:2] == ["misical", "train"]
    assert main([*argv[1:], "--logdir", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    again = tmp_path / "b" / first.relative_to(tmp_path / "a")
    repeated = yaml.safe_load((again / "config.yaml").read_text())
    assert repeated["hyperparams"] == config["hyperparams"]
    assert repeated["env_kwargs"] == config["env_kwargs"]
    assert repeated["phases"] == config["phases"]
    summaries = [json.loads((run / "summary.json").read_text()) for run in (first, again)]
    for summary in summaries:
        summary.pop("seconds")
    assert summaries[0] == summaries[1]


def test_python_dash_m_entry_point(tiny_store, tmp_path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "misical_gym.train",
            "--agent",
            "bald",
            "--env",
            "MiSiCAL-Store",
            "--steps",
            "16",
            "--logdir",
            str(tmp_path),
            "--eval-episodes",
            "1",
            "--env-kwargs",
            f"root={tiny_store.path}",
            "budget=8",
            "pool_size=8",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["agent"] == "bald"
