"""``misical train``: one agent, one env, one target; pretrain on init, then deploy on pool.

A run directory ``<logdir>/<env>/<target>/<agent>_<seed>/`` holds the TensorBoard events
(``tb_1/``, the same keys for every agent so their curves overlay), ``config.yaml`` (everything
needed to reproduce the run, with the ``misical train`` command that does), ``hyperparams.yml``
(the resolved hyperparameters that command reads), the saved model and ``summary.json`` (the
greedy policy's mean reward, target pixels per episode and hit rate on held-out pool episodes).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import itertools
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

import misical_gym
from misical_gym.agents.policy import Agent, CandidatePolicy, play_episode
from misical_gym.atomic import atomic_path, atomic_write_text
from misical_gym.envs.patch_selection import unwrap_misical
from misical_gym.paths import safe_name
from misical_gym.train import yaml_values
from misical_gym.train.agents import (
    AGENTS,
    DDQN_AGENTS,
    SB3_AGENTS,
    check_agent,
    check_hyperparams,
    load_agent,
    load_hyperparams,
    make_agent,
    split_experiment,
    valid_hyperparams,
)

CHECKPOINT = "checkpoint.zip"
"""The DDQN's resumable checkpoint inside a run directory (replay and random states included)."""
DEFAULT_CHECKPOINT_EVERY = 5_000
"""Env steps between a DDQN run's checkpoints: each holds the replay (tens of MB at the default
buffer), and the DDQN takes about a minute or two for this many steps on two CPU cores."""


@dataclass(frozen=True)
class TrainingRun:
    """What :func:`run_training` made: its run directory, the trained model and its summary."""

    run_dir: Path
    model: Agent
    summary: dict[str, Any]


def make_misical_env(
    env_id: str, split: str, target: str | int | None, env_kwargs: dict[str, Any]
) -> gym.Env:
    """``gym.make`` of a MiSiCAL env, with clear errors for an unknown id or argument.

    ``import misical_gym`` has registered the ids.
    """
    from misical_gym.envs import MiSiCALEnv

    ours = sorted(k for k, spec in gym.registry.items() if _is_misical(spec.entry_point))
    if env_id not in ours:
        raise ValueError(f"unknown env {env_id!r}; choose one of {', '.join(ours)}")
    valid = [k for k in inspect.signature(MiSiCALEnv.__init__).parameters if k != "self"]
    unknown = sorted(set(env_kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown env argument(s) {', '.join(unknown)}; valid ones: {', '.join(valid)}"
        )
    kwargs = {**env_kwargs, "split": split}
    if target is not None:
        kwargs["target_class"] = target
    return gym.make(env_id, **kwargs)


def _is_misical(entry_point: Any) -> bool:
    """Whether a registry entry point builds this package's env (a string or a class)."""
    name = entry_point if isinstance(entry_point, str) else getattr(entry_point, "__module__", "")
    return str(name).startswith("misical_gym.")


def target_label(env: gym.Env) -> str:
    """The run's target as a directory name: the class name made safe (a class name from a
    dataset must not leave ``--logdir``), or ``random``."""
    unwrapped = unwrap_misical(env)
    if unwrapped.fixed_target is None:
        return "random"
    return safe_name(unwrapped.store.class_names[unwrapped.fixed_target])


def greedy_pool_statistics(
    model: CandidatePolicy, env: gym.Env, episodes: int, seed: int
) -> dict[str, float]:
    """Greedy episodes: mean reward, target pixels per episode and hit rate (picks with target)."""
    played = [play_episode(model, env, seed + episode).statistics for episode in range(episodes)]
    return {
        "mean_reward": float(np.mean([p["r"] for p in played])),
        "target_pixels": float(np.mean([p["target_pixels"] for p in played])),
        "hit_rate": sum(p["hits"] for p in played) / max(sum(p["l"] for p in played), 1),
    }


def run_training(
    agent: str,
    env_id: str,
    *,
    env_kwargs: dict[str, Any] | None = None,
    target: str | int | None = None,
    steps: int | None = None,
    pretrain_steps: int | None = None,
    online_steps: int | None = None,
    seed: int = 0,
    logdir: str | Path = "runs",
    hyperparams_file: str | Path | None = None,
    hyperparams: dict[str, Any] | None = None,
    device: str = "auto",
    eval_episodes: int = 20,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
) -> TrainingRun:
    """Train (or roll out) ``agent`` and write its run directory; returns it and the model.

    Without ``pretrain_steps``/``online_steps``, ``steps`` are spent on the env's split
    (``init`` unless ``env_kwargs`` says otherwise). With them, the agent first learns on
    ``init`` (labels known), then on ``pool`` (labels revealed as patches are acquired), both in
    one run and one TensorBoard curve. ``threads`` caps torch's CPU threads for the run (default:
    half the cores, like the segmenter: on a busy 2-core machine a 4,000-step DDQN run took
    7 minutes with torch's default of 2 threads, and a 2,000-step one 35 s with 1).

    A run killed before it finished resumes when started again with the same arguments: the
    DDQN from its last checkpoint (every ``checkpoint_every`` env steps, at an episode end,
    replay and random states included), to the same weights, summary and TensorBoard curve
    as a run that was never stopped; the other agents, whose runs are short, from the start,
    which gives the same result as they are seeded. A finished run, or one made with other
    arguments, is replaced only with ``overwrite``.
    """
    check_agent(agent)
    if checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be non-negative, got {checkpoint_every}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")
    if isinstance(eval_episodes, bool) or not isinstance(eval_episodes, int) or eval_episodes < 1:
        # 0 episodes would average nothing into NaN, which is not JSON.
        raise ValueError(f"--eval-episodes must be at least 1, got {eval_episodes!r}")
    params = load_hyperparams(agent, env_id, hyperparams_file)
    params.update(hyperparams or {})
    # The files' run keys (rl-zoo3's n_timesteps, env_kwargs) are defaults under the arguments.
    params, experiment = split_experiment(params)
    env_kwargs = {**experiment["env_kwargs"], **(env_kwargs or {})}
    for name, value in (
        ("steps", steps),
        ("pretrain_steps", pretrain_steps),
        ("online_steps", online_steps),
    ):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
    if pretrain_steps is not None or online_steps is not None:
        if steps is not None:
            raise ValueError("give either --steps or --pretrain-steps/--online-steps, not both")
        phases = [("init", pretrain_steps or 0), ("pool", online_steps or 0)]
    else:
        total = experiment["n_timesteps"] if steps is None else steps
        phases = [(env_kwargs.pop("split", "init"), total)]
    env_kwargs.pop("split", None)
    phases = [(split, n) for split, n in phases if n > 0] or [(phases[0][0], 0)]

    env = make_misical_env(env_id, phases[0][0], target, env_kwargs)
    run_dir = Path(logdir) / env_id / target_label(env) / f"{agent}_{seed}"
    base = unwrap_misical(env)
    store, fixed = base.store, base.fixed_target
    config = {
        "agent": agent,
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "target": "random" if fixed is None else store.class_names[fixed],
        "store": str(store.path),
        "package_version": misical_gym.__version__,
        "seed": seed,
        "phases": [{"split": s, "steps": n} for s, n in phases],
        "hyperparams": params,
        "device": device,
        "eval_episodes": eval_episodes,
    }
    hyperparams_path = run_dir / "hyperparams.yml"
    config["command"] = train_command(config, hyperparams_path)
    resume = _resumable(run_dir, config, overwrite)
    common = {"seed": seed, "tensorboard_log": str(run_dir), "device": device, "verbose": 0}
    if agent in DDQN_AGENTS and checkpoint_every:
        common |= {
            "checkpoint_freq": checkpoint_every,
            "checkpoint_path": str(run_dir / CHECKPOINT),
        }
    valid = valid_hyperparams(agent)
    if "device" in valid:
        from misical_gym.runtime import resolve_device

        resolve_device(device)  # a clear error for cuda without a GPU, before any work
    # Built before the run directory exists, so a bad hyperparameter leaves nothing behind.
    # SB3 fills policy_kwargs in place: give it a copy, keep ``params`` as the config says.
    check_hyperparams(agent, params)
    try:
        model = make_agent(
            agent, env, **{k: v for k, v in common.items() if k in valid}, **copy.deepcopy(params)
        )
    except (TypeError, ValueError, AssertionError) as exc:  # SB3 checks arguments with asserts
        raise ValueError(f"agent {agent!r} rejected its hyperparameters {params}: {exc}") from exc
    ends = list(itertools.accumulate(n for _, n in phases))  # env steps when each phase ends
    resume_phase, resumed_at = None, 0
    if resume is not None:
        from misical_gym.agents.ddqn import DDQN

        resumed_at = DDQN.checkpoint_timesteps(resume)
        resume_phase = next((i for i, end in enumerate(ends) if resumed_at <= end), len(ends) - 1)
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # the package's own unfinished run (_resumable checked)
    run_dir.mkdir(parents=True, exist_ok=True)
    # The resolved hyperparameters as a file --hyperparams reads, so the command is exact.
    atomic_write_text(hyperparams_path, yaml.safe_dump({env_id: params}, sort_keys=False))
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    from misical_gym.runtime import cpu_threads

    start = time.time()
    with cpu_threads(threads):
        for index, (split, n) in enumerate(phases):
            if resume_phase is not None and index < resume_phase:
                continue
            phase_env = env if index == 0 else make_misical_env(env_id, split, target, env_kwargs)
            if index == resume_phase:
                assert resume is not None
                # The checkpoint was taken in this phase: it holds this env's random state.
                _truncate_tensorboard(run_dir, resumed_at)
                model = load_agent(agent, resume, phase_env, device)
                steps_left, first = ends[index] - resumed_at, False
            else:
                if index > 0:
                    # Agents seed only the env they were built with; unseeded, this one would
                    # draw its episodes from OS entropy and the run would not repeat.
                    phase_env.reset(seed=seed + index)
                    model.set_env(phase_env)
                steps_left, first = n, index == 0
            learn_phase(
                model,
                agent,
                steps_left,
                first=first,
                description=f"{agent} {split}",
                progress=progress,
            )
        saved = model.save(run_dir / "model")
        model_path = Path(saved) if saved is not None else run_dir / "model.zip"
        # A pool still to be annotated may hold no labelled patch to evaluate on: then init.
        eval_split = "pool" if store.split_ids("pool", labelled=True).size else "init"
        eval_env = make_misical_env(env_id, eval_split, target, env_kwargs)
        if agent == "oracle":
            model.set_env(eval_env)  # the oracle reads the candidates of the env it acts in
        evaluation = greedy_pool_statistics(model, eval_env, eval_episodes, seed=10_000 + seed)
    summary = {
        "agent": agent,
        "env_id": env_id,
        "target": config["target"],
        "seed": seed,
        "timesteps": sum(n for _, n in phases),
        "eval_split": eval_split,
        "eval_episodes": eval_episodes,
        "final_mean_reward": evaluation["mean_reward"],
        "target_pixels": evaluation["target_pixels"],
        "hit_rate": evaluation["hit_rate"],
        "model": model_path.name,
        "seconds": round(time.time() - start, 2),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1, allow_nan=False))
    return TrainingRun(run_dir, model, summary)


ONLINE_AGENTS: tuple[str, ...] = (*DDQN_AGENTS, *SB3_AGENTS)
"""The agents ``--resume RUN --online-steps N`` continues: those whose saved model is all they
learn from. Not the supervised ablation: its file keeps the classifier, not the examples it was
fitted on, so an update would refit it on the new picks alone."""


def continue_online(
    run: str | Path,
    online_steps: int,
    *,
    out: str | Path | None = None,
    device: str = "auto",
    eval_episodes: int | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> TrainingRun:
    """Continue a finished run's policy on the pool's labelled patches: deploy, then update.

    The saved model learns ``online_steps`` more env steps on the ``pool`` split of the run's
    store as it is now, so patches labelled since (``misical label``) are what it learns from;
    the environment draws only labelled patches. The result is a new run directory (default
    ``<run>_online<N>`` beside it) with the same files as any run; the original is left alone.

    Raises:
        ValueError: ``run`` is not a finished run, or its agent does not learn (a heuristic).
        FileExistsError: the output directory exists.
    """
    from misical_gym.train.select import read_run

    run_dir = Path(run)
    if isinstance(online_steps, bool) or not isinstance(online_steps, int) or online_steps < 1:
        raise ValueError(f"--online-steps must be a positive integer, got {online_steps!r}")
    config, model_path = read_run(run_dir)
    agent = config["agent"]
    if agent not in ONLINE_AGENTS:
        raise ValueError(
            f"run {run_dir} is a {agent!r} run, which cannot be updated online from its saved "
            f"file; --resume continues {', '.join(ONLINE_AGENTS)}"
        )
    out_dir = (
        Path(out) if out is not None else run_dir.with_name(f"{run_dir.name}_online{online_steps}")
    )
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose another --out")
    target = None if config["target"] == "random" else config["target"]
    env_kwargs = dict(config["env_kwargs"])
    env = make_misical_env(config["env_id"], "pool", target, env_kwargs)
    eval_episodes = config["eval_episodes"] if eval_episodes is None else eval_episodes
    seed = int(config["seed"])
    from misical_gym.runtime import cpu_threads

    start = time.time()
    with cpu_threads(threads):
        model = load_agent(agent, model_path, env, device)
        env.reset(seed=seed + 2)  # the online phase's own seeded episodes
        out_dir.mkdir(parents=True)
        model.tensorboard_log = str(out_dir)
        learn_phase(
            model, agent, online_steps, first=False, description=f"{agent} pool", progress=progress
        )
        saved = model.save(out_dir / "model")
        evaluation = greedy_pool_statistics(
            model,
            make_misical_env(config["env_id"], "pool", target, env_kwargs),
            eval_episodes,
            seed=10_000 + seed,
        )
    new_config = {
        **config,
        "phases": [*config["phases"], {"split": "pool", "steps": online_steps}],
        "resumed_from": str(run_dir),
        "device": device,
        "eval_episodes": eval_episodes,
    }
    new_config["command"] = shlex.join(
        ["misical", "train", "--resume", str(run_dir), "--online-steps", str(online_steps)]
    )
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(new_config, sort_keys=False))
    summary = {
        "agent": agent,
        "env_id": config["env_id"],
        "target": config["target"],
        "seed": seed,
        "timesteps": sum(int(p["steps"]) for p in new_config["phases"]),
        "eval_split": "pool",
        "eval_episodes": eval_episodes,
        "final_mean_reward": evaluation["mean_reward"],
        "target_pixels": evaluation["target_pixels"],
        "hit_rate": evaluation["hit_rate"],
        "model": Path(saved if saved is not None else out_dir / "model.zip").name,
        "seconds": round(time.time() - start, 2),
        "resumed_from": str(run_dir),
        "labelled_pool_patches": int(unwrap_misical(env).split_ids.size),
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1, allow_nan=False))
    return TrainingRun(out_dir, model, summary)


def _resumable(run_dir: Path, config: dict[str, Any], overwrite: bool) -> Path | None:
    """The checkpoint to resume ``run_dir`` from, or None to start afresh.

    Raises:
        FileExistsError: ``run_dir`` holds a finished run, a run made with other arguments, or
            something that is not a run of this package, and ``overwrite`` is not given (a
            folder that is not a run is never replaced).
    """
    if not run_dir.exists():
        return None
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileExistsError(
            f"{run_dir} exists and is not a run of misical train (no config.yaml): remove it or "
            "choose another --logdir"
        )
    if overwrite:
        return None
    if (run_dir / "summary.json").is_file():
        raise FileExistsError(f"run {run_dir} exists; pass --overwrite to replace it")
    try:
        same = yaml_values.load(config_file.read_text()) == config
    except yaml.YAMLError:
        same = False
    if not same:
        raise FileExistsError(
            f"run {run_dir} was started with other arguments and did not finish; pass "
            "--overwrite to replace it"
        )
    checkpoint = run_dir / CHECKPOINT
    return checkpoint if checkpoint.is_file() else None


def _truncate_tensorboard(run_dir: Path, step: int) -> None:
    """Drop the TensorBoard events of ``run_dir`` logged after env step ``step``: a resumed
    run logs them again, and a curve must not hold its points twice. Returns once a writer
    made now sorts after every kept file."""
    from tensorboard.compat.proto.event_pb2 import Event

    files = list(run_dir.glob("tb_*/events.out.tfevents.*"))  # a rewrite keeps its name
    for events in files:
        data, kept, offset = events.read_bytes(), bytearray(), 0
        while offset + 12 <= len(data):  # TFRecord: length, its CRC, payload, payload CRC
            length = int.from_bytes(data[offset : offset + 8], "little")
            record = data[offset : offset + 12 + length + 4]
            if len(record) < 12 + length + 4:
                break  # a record cut short by the kill
            if Event.FromString(record[12 : 12 + length]).step <= step:
                kept += record
            offset += len(record)
        if len(kept) != len(data):
            with atomic_path(events) as tmp:
                tmp.write_bytes(bytes(kept))
    # TensorBoard reads a folder's event files in name order, and a name starts with the second
    # its writer was made (then host and pid): a resumed writer made in the killed one's second
    # could sort first, and its points would be read before the earlier ones.
    made = [p.name.split(".")[3] for p in files]
    latest = max((int(s) for s in made if s.isdigit()), default=-1)
    while int(time.time()) <= latest:
        time.sleep(0.05)


def train_command(config: dict[str, Any], hyperparams_file: Path) -> str:
    """The ``misical train`` command that repeats the run ``config`` describes.

    ``hyperparams_file`` holds the run's resolved hyperparameters; ``--logdir`` is left to the
    user (an existing run is never replaced without ``--overwrite``).
    """
    phases = config["phases"]
    env_kwargs = dict(config["env_kwargs"])
    if [p["split"] for p in phases] == ["init", "pool"]:
        steps = ["--pretrain-steps", phases[0]["steps"], "--online-steps", phases[1]["steps"]]
    else:
        steps = ["--steps", phases[0]["steps"]]
        if phases[0]["split"] != "init":
            env_kwargs["split"] = phases[0]["split"]
    words: list[Any] = ["misical", "train", "--agent", config["agent"], "--env", config["env_id"]]
    if env_kwargs:
        # JSON spells non-strings as YAML reads them back (true, null, [0.0, 0.05]).
        words += ["--env-kwargs"] + [
            f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in env_kwargs.items()
        ]
    words += ["--target", config["target"], *steps, "--seed", config["seed"]]
    words += ["--device", config["device"], "--eval-episodes", config["eval_episodes"]]
    words += ["--hyperparams", hyperparams_file.resolve()]
    return shlex.join(str(w) for w in words)


def learn_phase(
    model: Agent, agent: str, steps: int, *, first: bool, description: str, progress: bool
) -> None:
    """One ``learn`` call with the TensorBoard keys every agent shares."""
    if agent in SB3_AGENTS:
        from misical_gym.train.callbacks import ActiveLearningMetrics, ProgressBar

        callbacks = [ActiveLearningMetrics()] + (
            [ProgressBar(steps, description)] if progress else []
        )
        # On-policy agents count log_interval in rollouts (SB3's A2C default, 100, would be
        # 3,200 steps at n_steps=32): log every rollout so short runs still draw curves.
        interval = 1 if agent in ("ppo", "a2c", "maskable-ppo") else 4
        model.learn(
            steps,
            callback=callbacks,
            log_interval=interval,
            tb_log_name="tb",
            reset_num_timesteps=first,
        )
    else:
        model.learn(steps, tb_log_name="tb", reset_num_timesteps=first, progress_bar=progress)


# ---------------------------------------------------------------------------- command line
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", help=f"one of: {', '.join(AGENTS)} (required without --resume)")
    parser.add_argument("--env", help="env id, e.g. MiSiCAL-Synthetic (required without --resume)")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue the finished run RUN's policy for --online-steps more steps on the "
        "pool's labelled patches (those labelled so far, e.g. by misical label); writes "
        f"RUN_online<N> (or --out). Agents: {', '.join(ONLINE_AGENTS)}",
    )
    parser.add_argument("--out", type=Path, help="with --resume: the new run directory")
    parser.add_argument(
        "--env-kwargs", nargs="*", default=[], metavar="K=V", help="env arguments, e.g. budget=32"
    )
    parser.add_argument("--target", help="target class name or index (default: the env's)")
    parser.add_argument(
        "--steps", type=int, help="env steps on the env's split (the file's n_timesteps)"
    )
    parser.add_argument("--pretrain-steps", type=int, help="env steps on split init first")
    parser.add_argument("--online-steps", type=int, help="then env steps on split pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logdir", type=Path, default=Path("runs"))
    parser.add_argument("--hyperparams", type=Path, help="YAML overriding the packaged defaults")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--eval-episodes", type=int, default=20, help="greedy pool episodes (20)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: half the cores)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run (a killed run resumes without it: the DDQN from its last "
        "checkpoint, other agents from the start)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULT_CHECKPOINT_EVERY,
        metavar="N",
        help=f"DDQN: env steps between resumable checkpoints ({DEFAULT_CHECKPOINT_EVERY}; 0: none)",
    )


def parse_env_kwargs(items: list[str]) -> dict[str, Any]:
    """``["budget=32", "reward=binary"]`` -> typed values (YAML scalars)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env-kwargs takes KEY=VALUE pairs, got {item!r}")
        out[key] = yaml_values.load(value)
    return out


def main(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.online_steps is None or args.steps is not None or args.pretrain_steps is not None:
            raise ValueError("--resume takes --online-steps N (and no --steps or --pretrain-steps)")
        run_dir = continue_online(
            args.resume,
            args.online_steps,
            out=args.out,
            device=args.device,
            threads=args.threads,
        ).run_dir
        logdir = run_dir.parent
    elif args.agent is None or args.env is None:
        raise ValueError("misical train needs --agent and --env (or --resume RUN)")
    else:
        run_dir, logdir = _train_from_arguments(args), args.logdir
    print((run_dir / "summary.json").read_text())
    print(f"run written to {run_dir}; tensorboard --logdir {logdir}", file=sys.stderr)
    return 0


def _train_from_arguments(args: argparse.Namespace) -> Path:
    """``misical train``'s arguments (without ``--resume``) to :func:`run_training`."""
    return run_training(
        args.agent,
        args.env,
        env_kwargs=parse_env_kwargs(args.env_kwargs),
        target=args.target,
        steps=args.steps,
        pretrain_steps=args.pretrain_steps,
        online_steps=args.online_steps,
        seed=args.seed,
        logdir=args.logdir,
        hyperparams_file=args.hyperparams,
        device=args.device,
        eval_episodes=args.eval_episodes,
        overwrite=args.overwrite,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
    ).run_dir
