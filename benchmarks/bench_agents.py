"""Agents on equal terms: greedy pool reward after the same env-step budget, per rare class.

For every rare class of the synthetic store, every agent and every seed, ``run_training``
pretrains on ``init`` and continues on ``pool`` for the same number of env steps, then its
greedy policy plays held-out ``pool`` episodes. Prints one JSON object (per-class means over
seeds, the training curves of mean episode reward against env steps, and the verdicts) and
writes a PNG of the curves. ``entropy`` runs too, so that "every heuristic" means all of them.
Every agent learns from and is scored on one reward, ``--reward`` (the env's own categorical
reward unless told), whatever its packaged hyperparameters' ``env_kwargs`` say.

``--time-to-supervised CLASS`` measures instead how fast an agent (``--agents``, default
``ddqn``) learns on that class: it trains as above, plays ``--episodes`` greedy pool episodes
every ``--eval-every`` env steps (their time not counted), and reports the training seconds and
env steps when the greedy mean reward first reaches 0.9x the supervised ablation's after the
whole budget (same seed, same evaluation episodes).

Usage: ``python benchmarks/bench_agents.py [--store DIR] [--pretrain-steps 3000]
[--online-steps 1000] [--seeds 3] [--workers 2] [--reward categorical]
[--plot bench_agents.png] [--agents a,b,...] [--time-to-supervised skis [--eval-every 250]]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.train.agents import HEURISTIC_AGENTS

AGENTS = (
    "ddqn",
    "ddqn-plain",
    "dqn",
    "qrdqn",
    "ppo",
    "random",
    "presence",
    "bald",
    "entropy",
    "supervised",
)


def env_kwargs(job: dict[str, Any]) -> dict[str, Any]:
    """Every agent's env: the job's store, and its reward named, so that no agent's packaged
    ``env_kwargs`` (the DDQN's ``reward: share``) puts it on other terms than the rest."""
    return {"root": job["store"], "reward": job["reward"]}


def one_run(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from misical_gym.train import run_training

    torch.set_num_threads(1)
    env_id = "MiSiCAL-Synthetic"  # its packaged hyperparameters, whichever store holds the world
    run_dir = Path(job["logdir"]) / env_id / job["target"] / f"{job['agent']}_{job['seed']}"
    if not _finished_as(run_dir, job, env_id):
        run_dir = run_training(
            job["agent"],
            env_id,
            env_kwargs=env_kwargs(job),
            target=job["target"],
            pretrain_steps=job["pretrain"],
            online_steps=job["online"],
            seed=job["seed"],
            logdir=job["logdir"],
            device="cpu",
            eval_episodes=job["episodes"],
            progress=False,
        ).run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    (events,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    curve = [(e.step, e.value) for e in accumulator.Scalars("rollout/ep_rew_mean")]
    return {**job, "summary": summary, "curve": curve}


def _finished_as(run_dir: Path, job: dict[str, Any], env_id: str) -> bool:
    """Whether ``run_dir`` holds a finished run of ``job`` with today's packaged defaults."""
    import yaml

    from misical_gym.train.agents import default_hyperparams, split_experiment

    if not (run_dir / "summary.json").is_file():
        return False
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    phases = [
        {"split": "init", "steps": job["pretrain"]},
        {"split": "pool", "steps": job["online"]},
    ]
    expected = {
        "store": job["store"],
        "seed": job["seed"],
        "phases": phases,
        "eval_episodes": job["episodes"],
        "env_kwargs": env_kwargs(job),
        "hyperparams": split_experiment(default_hyperparams(job["agent"], env_id))[0],
    }
    return all(config.get(key) == value for key, value in expected.items())


def time_to_supervised(job: dict[str, Any]) -> dict[str, Any]:
    """Training seconds and env steps until the greedy reward reaches 0.9x supervised's."""
    import time

    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    from misical_gym.train import run_training
    from misical_gym.train.agents import default_hyperparams, make_agent, split_experiment
    from misical_gym.train.run import greedy_pool_statistics, make_misical_env

    torch.set_num_threads(1)
    env_id, seed, kwargs = "MiSiCAL-Synthetic", job["seed"], env_kwargs(job)
    eval_seed = 10_000 + seed  # run_training's evaluation episodes
    supervised = run_training(
        "supervised",
        env_id,
        env_kwargs=kwargs,
        target=job["target"],
        pretrain_steps=job["pretrain"],
        online_steps=job["online"],
        seed=seed,
        logdir=job["logdir"],
        device="cpu",
        eval_episodes=job["episodes"],
        progress=False,
    ).summary["final_mean_reward"]
    goal = 0.9 * supervised
    eval_env = make_misical_env(env_id, "pool", job["target"], kwargs)
    model: Any = None
    reached: dict[str, float] | None = None
    curve: list[tuple[int, float, float]] = []
    clock = {"start": time.perf_counter(), "paused": 0.0}

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            nonlocal reached
            steps = self.num_timesteps
            if steps % job["eval_every"]:
                return True
            paused = time.perf_counter()
            trained = paused - clock["start"] - clock["paused"]
            played = greedy_pool_statistics(model, eval_env, job["episodes"], eval_seed)
            trained, reward = round(trained, 2), round(played["mean_reward"], 4)
            curve.append((steps, trained, reward))
            if reached is None and reward >= goal:
                reached = {"env_steps": steps, "seconds": trained, "reward": reward}
            clock["paused"] += time.perf_counter() - paused
            return True

    params, _ = split_experiment(default_hyperparams(job["agent"], env_id))
    phases = [("init", job["pretrain"]), ("pool", job["online"])]
    for index, (split, steps) in enumerate(phases):
        env = make_misical_env(env_id, split, job["target"], kwargs)
        if index == 0:
            model = make_agent(job["agent"], env, seed=seed, device="cpu", **params)
        else:
            env.reset(seed=seed + index)  # as run_training seeds its later phases
            model.set_env(env)
        model.learn(steps, callback=Evaluate(), reset_num_timesteps=index == 0)
    return {
        "agent": job["agent"],
        "seed": seed,
        "supervised_reward": supervised,
        "goal_reward": goal,
        "reached": reached,
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a synthetic-world store (default: the default)")
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--online-steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=30, help="greedy pool episodes per run")
    parser.add_argument(
        "--reward",
        default="categorical",
        help="the reward every agent learns from and is scored on (default: the env's own)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=Path("bench_agents.png"))
    parser.add_argument("--agents", default=None, help=f"default: {','.join(AGENTS)}")
    parser.add_argument("--time-to-supervised", metavar="CLASS")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument(
        "--runs",
        type=Path,
        help="keep the runs in this folder (default: a temporary one); runs finished there with "
        "the same arguments are read, not trained again, so an interrupted benchmark resumes",
    )
    parser.add_argument("--targets", help="comma-separated classes (default: the rare ones)")
    args = parser.parse_args()

    from misical_gym.envs import resolve_store

    store = resolve_store(args.store, "synthetic" if args.store is None else None)
    if args.time_to_supervised:
        jobs = [
            {
                "agent": agent,
                "target": args.time_to_supervised,
                "seed": seed,
                "store": str(store.path),
                "reward": args.reward,
                "pretrain": args.pretrain_steps,
                "online": args.online_steps,
                "episodes": args.episodes,
                "eval_every": args.eval_every,
            }
            for agent in (args.agents or "ddqn").split(",")
            for seed in range(args.seeds)
        ]
        with tempfile.TemporaryDirectory() as logdir, ProcessPoolExecutor(args.workers) as pool:
            runs = list(pool.map(time_to_supervised, [{**j, "logdir": logdir} for j in jobs]))
        print(json.dumps({"store": store.path.name, "runs": runs}, indent=1))
        return
    rare = [store.class_names[c] for c in store.rare_classes]
    targets = args.targets.split(",") if args.targets else rare
    agents = (args.agents or ",".join(AGENTS)).split(",")
    with tempfile.TemporaryDirectory() as scratch:
        logdir = str(args.runs or scratch)
        jobs = [
            {
                "agent": agent,
                "target": target,
                "seed": seed,
                "store": str(store.path),
                "reward": args.reward,
                "pretrain": args.pretrain_steps,
                "online": args.online_steps,
                "episodes": args.episodes,
                "logdir": logdir,
            }
            for target in targets
            for seed in range(args.seeds)
            for agent in agents
        ]
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(one_run, jobs))

    table: dict[str, dict[str, Any]] = {}
    for target in targets:
        table[target] = {}
        for agent in agents:
            runs = [r for r in results if r["target"] == target and r["agent"] == agent]
            rewards = [r["summary"]["final_mean_reward"] for r in runs]
            pixels = [r["summary"]["target_pixels"] for r in runs]
            table[target][agent] = {
                "mean_reward": float(np.mean(rewards)),
                "std_reward": float(np.std(rewards)),
                "target_pixels": float(np.mean(pixels)),
                "hit_rate": float(np.mean([r["summary"]["hit_rate"] for r in runs])),
                "curve": _mean_curve([r["curve"] for r in runs]),
            }
    # The claim under test: DDQN against SB3's DQN and every heuristic; then against all.
    rivals = [a for a in agents if a == "dqn" or a in HEURISTIC_AGENTS]
    others = [a for a in agents if a not in ("ddqn", "supervised")]

    def ddqn_beats(names: list[str]) -> dict[str, bool]:
        return {
            t: all(table[t]["ddqn"]["mean_reward"] > table[t][a]["mean_reward"] for a in names)
            for t in targets
            if "ddqn" in agents
        }

    beats, beats_all = ddqn_beats(rivals), ddqn_beats(others)
    vs_supervised = {
        t: table[t]["ddqn"]["mean_reward"] - table[t]["supervised"]["mean_reward"]
        for t in targets
        if {"ddqn", "supervised"} <= set(agents)
    }
    _plot(table, targets, agents, args.plot)
    report = {
        "store": store.path.name,
        "env_steps": args.pretrain_steps + args.online_steps,
        "pretrain_steps": args.pretrain_steps,
        "online_steps": args.online_steps,
        "seeds": args.seeds,
        "eval_episodes": args.episodes,
        "results": {
            t: {a: {k: v for k, v in row.items() if k != "curve"} for a, row in table[t].items()}
            for t in targets
        },
        "ddqn_beats_dqn_and_every_heuristic": beats,
        "ddqn_beats_them_on_most_rare_classes": sum(beats.values()) > len(beats) / 2,
        "ddqn_beats_every_other_agent_but_supervised": beats_all,
        "ddqn_minus_supervised_mean_reward": vs_supervised,
        "curves": {t: {a: table[t][a]["curve"] for a in agents} for t in targets},
        "plot": args.plot.name,
    }
    print(json.dumps(report, indent=1))


def _mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Average curves of several seeds on a common grid of steps."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    grid = np.linspace(0, min(c[-1][0] for c in curves), 20)
    values = [np.interp(grid, [s for s, _ in c], [v for _, v in c]) for c in curves]
    return [
        (int(s), round(float(v), 4)) for s, v in zip(grid, np.mean(values, axis=0), strict=True)
    ]


def _plot(table: dict, targets: list[str], agents: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        for agent in agents:
            curve = table[target][agent]["curve"]
            if curve:
                ax.plot(*zip(*curve, strict=True), label=agent)
        ax.set_title(f"target: {target}")
        ax.set_xlabel("env steps")
        ax.set_ylabel("training episode reward (mean of 100)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
