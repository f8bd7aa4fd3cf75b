"""``misical sweep``: a grid of hyperparameters and env arguments, each point evaluated as
``misical evaluate`` evaluates a policy.

Every point of ``--grid`` (the agent's hyperparameters, e.g. ``gamma=0,0.9 tau=0.005,1.0``)
times ``--env-grid`` (the environment's arguments, e.g. ``reward=categorical,binary`` or
``features=all,presence``) trains one policy per target and seed and selects ``--budget`` pool
patches with it, through the evaluation's :class:`~misical_gym.train.jobs.Job`,
:func:`~misical_gym.train.evaluate.run_missing_jobs` and executors. Random picks the same
budgets as the baseline. Each job file is keyed by the digest of the job's full configuration
(the point included), so a killed sweep resumes where it stopped and a changed setting runs
again.

Points are compared on what a user wants: the target pixels their picks acquire on the pool,
whatever reward they were trained on; the reward their greedy picks earn under their own
scheme is reported beside it, each against random's. ``tau=1.0`` is a hard target copy: the
target network is replaced by the online one every :data:`HARD_COPY_INTERVAL` env steps
(``target_update="hard"``), unless the grid sets ``target_update`` or
``target_update_interval`` itself.

Outputs in ``--out`` (each written atomically): ``points.json`` and ``points.csv`` (one row per
point and target), ``summary.json``, ``summary.md`` (the best point, the spread across seeds
beside the spread across settings) and ``heatmap_<target>__<a>__<b>.png`` per target and pair
of swept axes. ``--retrain`` adds the IoU after retraining for the best point of each reward
scheme on the rare classes; ``--optuna N`` searches the grid's values with Optuna's TPE sampler
instead of running every point.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import io
import itertools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.atomic import atomic_path, atomic_write_text
from misical_gym.paths import safe_name
from misical_gym.train import yaml_values
from misical_gym.train.agents import AGENTS, HEURISTIC_AGENTS, agent_class, valid_hyperparams
from misical_gym.train.evaluate import (
    add_job_arguments,
    check_no_retraining,
    check_run_settings,
    retraining_settings,
    run_missing_jobs,
    target_names,
)
from misical_gym.train.jobs import Job
from misical_gym.train.report import retraining_heading
from misical_gym.train.statistics import summarize

HARD_COPY_INTERVAL = 500
"""Env steps between hard target copies of a ``tau=1.0`` point: six copies in the default
3,000 + 1,000 training steps after the packaged 500 ``learning_starts`` (DDQNConfig's own
default, 10,000, would never copy in a sweep-sized run)."""
SWEEP_SETS_HYPERPARAMS: tuple[str, ...] = (
    "seed",
    "device",
    "verbose",
    "tensorboard_log",
    "checkpoint_freq",
    "checkpoint_path",
)
"""Hyperparameters the sweep's jobs set themselves: not grid axes."""
SWEEP_SETS_ENV: tuple[str, ...] = (
    "root",
    "store_name",
    "target_class",
    "split",
    "budget",
    "pool_size",
    "flatten",
    "target_onehot",
    "render_mode",
)
"""Env arguments the sweep sets (``--budget``, ``--pool-size``, the targets): not grid axes."""
REWARD_KEYS: tuple[str, ...] = ("reward", "reward_bins", "reward_values")
"""The env arguments that change the reward of a row (random's picks are scored under each)."""
Point = tuple[dict[str, Any], dict[str, Any]]
"""A grid point: the agent's hyperparameters and the env's arguments."""


def parse_grid(items: Sequence[str], flag: str) -> dict[str, list[Any]]:
    """``["gamma=0,0.9", "tau=1.0"]`` -> ``{"gamma": [0, 0.9], "tau": [1.0]}`` (YAML scalars).

    A ``+`` inside a value makes it a list: ``features=bald_mean+target_presence``.

    Raises:
        ValueError: an item is not ``KEY=V1,V2,...``, a key comes twice or a value repeats.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values or "" in values.split(","):
            raise ValueError(f"{flag} takes KEY=V1,V2,... items, got {item!r}")
        if key in grid:
            raise ValueError(f"{flag} names {key!r} twice; give all its values in one item")
        load = yaml_values.load
        parsed = [
            [load(v) for v in value.split("+")] if "+" in value else load(value)
            for value in values.split(",")
        ]
        if len({json.dumps(v) for v in parsed}) != len(parsed):
            raise ValueError(f"{flag} {key}: a value repeats in {values!r}")
        grid[key] = parsed
    return grid


def check_grids(
    agent: str, grid: dict[str, list[Any]], env_grid: dict[str, list[Any]], store: str
) -> list[Point]:
    """Every point of ``grid`` x ``env_grid``, each checked before any work.

    Grid keys must be the agent's hyperparameters (for the DDQN, ``DDQNConfig``'s fields), and
    each point must build a config; env-grid keys must be the environment's arguments, and each
    point must build an env on ``store``. The messages list the valid keys.

    Raises:
        ValueError: an unknown agent, key or a value its config or env refuses.
    """
    from misical_gym.envs import MiSiCALEnv

    if agent not in AGENTS or agent in HEURISTIC_AGENTS:
        learned = [a for a in AGENTS if a not in HEURISTIC_AGENTS]
        raise ValueError(f"--agent must be a learned agent ({', '.join(learned)}), got {agent!r}")
    hyper = [k for k in valid_hyperparams(agent) if k not in SWEEP_SETS_HYPERPARAMS]
    unknown = sorted(set(grid) - set(hyper))
    if unknown:
        raise ValueError(
            f"--grid: unknown hyperparameter(s) {', '.join(unknown)} for {agent!r}; valid keys: "
            f"{', '.join(hyper)}"
        )
    env_keys = [k for k in inspect.signature(MiSiCALEnv.__init__).parameters if k != "self"]
    env_keys = [k for k in env_keys if k not in SWEEP_SETS_ENV]
    unknown = sorted(set(env_grid) - set(env_keys))
    if unknown:
        raise ValueError(
            f"--env-grid: unknown env argument(s) {', '.join(unknown)}; valid keys: "
            f"{', '.join(env_keys)} (--budget, --pool-size and --targets set the others)"
        )
    config_class: Callable[..., Any] | None = getattr(agent_class(agent), "config_class", None)
    points = []
    for hyper_values in itertools.product(*grid.values()):
        hyperparams = resolve_hyperparams(agent, dict(zip(grid, hyper_values, strict=True)))
        if config_class is not None:
            try:
                config_class(**hyperparams)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"--grid point {hyperparams}: {exc}") from None
        for env_values in itertools.product(*env_grid.values()):
            points.append((hyperparams, dict(zip(env_grid, env_values, strict=True))))
    for env_kwargs in {json.dumps(e, sort_keys=True) for _, e in points}:
        try:
            MiSiCALEnv(store, split="pool", target_class="random", **json.loads(env_kwargs))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--env-grid point {env_kwargs}: {exc}") from None
    return points


def resolve_hyperparams(agent: str, point: dict[str, Any]) -> dict[str, Any]:
    """A grid point's hyperparameters as the agent gets them: ``tau=1.0`` of an agent with
    ``target_update`` (the DDQN) is a hard copy every :data:`HARD_COPY_INTERVAL` env steps."""
    hard = point.get("tau") == 1.0 and "target_update" not in point
    if hard and "target_update" in valid_hyperparams(agent):
        point = {"target_update": "hard", "target_update_interval": HARD_COPY_INTERVAL, **point}
    return point


def point_label(point: Point, axes: Sequence[str]) -> str:
    """``gamma=0.9 tau=0.005``: the point's values on the swept axes.

    A grid that sweeps nothing names every setting its one point sets, so that a run of
    non-default settings is not reported as ``defaults``; that name is left for a point that
    sets nothing.
    """
    values = {**point[0], **point[1]}
    words = [f"{k}={_text(values[k])}" for k in (axes or values)]
    return " ".join(words) or "defaults"


def _text(value: Any) -> str:
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def sweep(
    store_path: str | Path,
    out: str | Path,
    *,
    agent: str = "ddqn",
    grid: dict[str, list[Any]] | None = None,
    env_grid: dict[str, list[Any]] | None = None,
    targets: str | list[str] = "all",
    budget: int = 100,
    seeds: int = 3,
    pool_size: int = 32,
    pretrain_steps: int = 3000,
    online_steps: int = 1000,
    workers: int = 1,
    use_ray: bool = False,
    ray_address: str | None = None,
    retrain: bool = False,
    retrain_epochs: int | None = None,
    retrain_learning_rate: float | None = None,
    retrain_weighting: str | None = None,
    retrain_weights_from: str | None = None,
    optuna_trials: int | None = None,
) -> dict[str, Any]:
    """Train and evaluate every point (or ``optuna_trials`` of them), then write the outputs.

    Returns:
        The summary (also ``summary.json``): per point and target the mean and spread of the
        target pixels and rewards, random's, the best point and, with ``retrain``, IoUs.
    """
    from misical_gym.store import FeatureStore

    grid, env_grid = dict(grid or {}), dict(env_grid or {})
    check_run_settings(workers, use_ray, ray_address, budget, seeds)
    if optuna_trials is not None and optuna_trials < 1:
        raise ValueError(f"--optuna must be at least 1, got {optuna_trials}")
    store = FeatureStore.open(store_path)
    points = check_grids(agent, grid, env_grid, str(store.path))
    if retrain:
        retraining = retraining_settings(
            store, retrain_epochs, retrain_learning_rate, retrain_weighting, retrain_weights_from
        )
    else:
        check_no_retraining(
            retrain_epochs, retrain_learning_rate, retrain_weighting, retrain_weights_from
        )
    names = target_names(store, targets)
    out = Path(out)
    base = Job(
        store=str(store.path.resolve()),
        store_fingerprint=store.fingerprint,
        target="",
        target_id=-1,
        policy=agent,
        seed=0,
        budget=budget,
        pool_size=pool_size,
        pretrain_steps=pretrain_steps,
        online_steps=online_steps,
        retrain=False,
        retrain_epochs=None,
        cache=str((out / "training").resolve()),
    )
    plan = _Plan(base, names, seeds, store.class_names, out / "jobs", workers, use_ray, ray_address)
    axes = [k for k, v in {**grid, **env_grid}.items() if len(v) > 1]
    if optuna_trials is None:
        evaluated = points
        plan.run(evaluated)
    else:
        evaluated = _optuna_points(plan, grid, env_grid, agent, optuna_trials)
    table = plan.table(evaluated, axes)
    summary: dict[str, Any] = {
        "agent": agent,
        "store": str(store.path),
        "grid": grid,
        "env_grid": env_grid,
        "axes": axes,
        "targets": names,
        "seeds": seeds,
        "budget": budget,
        "pool_size": pool_size,
        "pretrain_steps": pretrain_steps,
        "online_steps": online_steps,
        "hard_copy_interval": HARD_COPY_INTERVAL,
        "optuna_trials": optuna_trials,
    }
    summary.update(_statistics(table, plan, evaluated, axes, store))
    if retrain:
        summary["retrain"] = plan.retrain(evaluated, table, axes, store, retraining)
    _write_outputs(out, table, summary)
    return summary


@dataclasses.dataclass
class _Plan:
    """The jobs of points: built from one template job, run through the evaluation's loop."""

    base: Job
    targets: list[str]
    seeds: int
    class_names: tuple[str, ...]
    jobs_dir: Path
    workers: int
    use_ray: bool
    ray_address: str | None
    rows: dict[Job, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def jobs(self, point: Point, policy: str | None = None) -> list[Job]:
        """The jobs of ``point`` (of random scored under its reward, with ``policy="random"``)."""
        hyperparams, env_kwargs = point
        if policy == "random":
            hyperparams = {}
            env_kwargs = {k: v for k, v in env_kwargs.items() if k in REWARD_KEYS}
        return [
            dataclasses.replace(
                self.base,
                policy=policy or self.base.policy,
                target=target,
                target_id=self.class_names.index(target),
                seed=seed,
                hyperparams=Job.encode(hyperparams),
                env_kwargs=Job.encode(env_kwargs),
            )
            for target in self.targets
            for seed in range(self.seeds)
        ]

    def run(self, points: Sequence[Point], retrain: tuple[Job, ...] = ()) -> None:
        """Run (or read back) the jobs of ``points`` and of random beside each, then ``retrain``."""
        jobs = list(retrain)
        for point in points:
            jobs += self.jobs(point) + self.jobs(point, "random")
        todo = list(dict.fromkeys(j for j in jobs if j not in self.rows))
        self.rows.update(
            run_missing_jobs(
                todo,
                self.jobs_dir,
                workers=self.workers,
                use_ray=self.use_ray,
                ray_address=self.ray_address,
                desc="sweep",
            )
        )

    def table(self, points: Sequence[Point], axes: Sequence[str]) -> list[dict[str, Any]]:
        """One row per point and target: its seeds' numbers and random's beside them."""
        table = []
        for point in points:
            mine, random = self.jobs(point), self.jobs(point, "random")
            for target in self.targets:
                row: dict[str, Any] = {"point": point_label(point, axes)}
                row.update({k: _text(v) for k, v in {**point[0], **point[1]}.items() if k in axes})
                row["target"] = target
                ours = [self.rows[j] for j in mine if j.target == target]
                theirs = [self.rows[j] for j in random if j.target == target]
                for key in ("target_pixels", "reward", "hit_rate"):
                    values = np.array([r[key] for r in ours], dtype=np.float64)
                    base = np.array([r[key] for r in theirs], dtype=np.float64)
                    row[f"{key}_mean"] = float(values.mean())
                    row[f"{key}_std"] = float(values.std())
                    row[f"random_{key}_mean"] = float(base.mean())
                row["target_pixels_over_random"] = (
                    row["target_pixels_mean"] - row["random_target_pixels_mean"]
                )
                row["reward_over_random"] = row["reward_mean"] - row["random_reward_mean"]
                row["seed_target_pixels"] = [r["target_pixels"] for r in ours]
                row["random_seed_target_pixels"] = [r["target_pixels"] for r in theirs]
                table.append(row)
        return table

    def retrain(
        self,
        points: Sequence[Point],
        table: list[dict[str, Any]],
        axes: Sequence[str],
        store: Any,
        retraining: dict[str, Any],
    ) -> dict[str, Any]:
        """IoU after retraining (``retraining``: :func:`retraining_settings`'s), on the rare
        classes (else every target), for the best point of each reward scheme (by target pixels
        on those classes) and for random."""
        rare = [store.class_names[c] for c in store.rare_classes]
        classes = [t for t in self.targets if t in rare] or list(self.targets)
        scores: dict[str, tuple[float, Point]] = {}
        for point in points:
            scheme = point[1].get("reward", "categorical")
            label = point_label(point, axes)
            score = float(
                np.mean(
                    [
                        r["target_pixels_mean"]
                        for r in table
                        if r["point"] == label and r["target"] in classes
                    ]
                )
            )
            if scheme not in scores or score > scores[scheme][0]:
                scores[scheme] = (score, point)
        chosen: dict[str, tuple[Point, str | None]] = {
            scheme: (point, None) for scheme, (_, point) in scores.items()
        }
        chosen["random"] = (({}, {}), "random")
        retrained = {
            scheme: [
                dataclasses.replace(job, retrain=True, **retraining)
                for job in self.jobs(point, policy)
                if job.target in classes
            ]
            for scheme, (point, policy) in chosen.items()
        }
        self.run((), tuple(job for jobs in retrained.values() for job in jobs))
        out: dict[str, Any] = {
            "epochs": retraining["retrain_epochs"],
            "learning_rate": retraining["retrain_learning_rate"],
            "weighting": retraining["retrain_weighting"],
            "weights_from": retraining["retrain_weights_from"],
            "classes": classes,
            "best": {},
        }
        for scheme, jobs in retrained.items():
            per_class: dict[str, float | None] = {}
            for target in classes:
                values = [
                    self.rows[j]["iou"]
                    for j in jobs
                    if j.target == target and self.rows[j]["iou"] is not None
                ]
                per_class[target] = float(np.mean(values)) if values else None
            measured = [v for v in per_class.values() if v is not None]
            point, policy = chosen[scheme]
            out["best"][scheme] = {
                "point": policy or point_label(point, axes),
                "iou": per_class,
                "mean_iou": float(np.mean(measured)) if measured else None,
            }
        return out


def _optuna_points(
    plan: _Plan,
    grid: dict[str, list[Any]],
    env_grid: dict[str, list[Any]],
    agent: str,
    trials: int,
) -> list[Point]:
    """``trials`` points chosen by Optuna's seeded TPE sampler among the grids' values, each
    scored by its mean target pixels over random across targets. Trials that repeat a point
    reuse its rows, and a resumed search replays the same proposals from the job files."""
    try:
        import optuna
    except ImportError as error:
        from misical_gym.errors import MissingDependencyError

        raise MissingDependencyError(
            '--optuna needs Optuna: pip install "misical-gym[optuna]"'
        ) from error
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    choices = {**grid, **env_grid}
    # Optuna's categorical choices are scalars: lists (feature columns) go by their JSON.
    encoded = {k: [json.dumps(v) for v in values] for k, values in choices.items()}
    points: list[Point] = []

    def objective(trial: Any) -> float:
        chosen = {k: json.loads(trial.suggest_categorical(k, v)) for k, v in encoded.items()}
        point = (
            resolve_hyperparams(agent, {k: chosen[k] for k in grid}),
            {k: chosen[k] for k in env_grid},
        )
        plan.run([point])
        if point not in points:
            points.append(point)
        rows = plan.table([point], [])
        return float(np.mean([r["target_pixels_over_random"] for r in rows]))

    study.optimize(objective, n_trials=trials)
    return points


def _statistics(
    table: list[dict[str, Any]],
    plan: _Plan,
    points: Sequence[Point],
    axes: Sequence[str],
    store: Any,
) -> dict[str, Any]:
    """The best point, and per target the spread across seeds beside that across settings."""
    labels = list(dict.fromkeys(r["point"] for r in table))
    means = {
        label: float(
            np.mean([r["target_pixels_over_random"] for r in table if r["point"] == label])
        )
        for label in labels
    }
    best = max(labels, key=means.__getitem__)
    # "beats random on X of C", with the evaluation's test, each point read as a policy.
    rows = [
        {"policy": r["point"], "target": r["target"], "target_pixels": v}
        for r in table
        for v in r["seed_target_pixels"]
    ]
    first: dict[str, list[int]] = {}
    for r in table:  # random's picks do not depend on the point: one copy per target
        first.setdefault(r["target"], r["random_seed_target_pixels"])
    rows += [
        {"policy": "random", "target": t, "target_pixels": v} for t, vs in first.items() for v in vs
    ]
    wins = summarize(rows, tuple(labels), plan.targets, store.rare_classes, store.class_names)
    spread = {}
    for target in plan.targets:
        mine = [r for r in table if r["target"] == target]
        spread[target] = {
            "best_point": max(mine, key=lambda r: r["target_pixels_mean"])["point"],
            "best_target_pixels": max(r["target_pixels_mean"] for r in mine),
            "random_target_pixels": mine[0]["random_target_pixels_mean"],
            "across_seeds": float(np.mean([r["target_pixels_std"] for r in mine])),
            "across_settings": float(np.std([r["target_pixels_mean"] for r in mine])),
        }
    return {
        "best_point": best,
        "best_target_pixels_over_random": means[best],
        "target_pixels_over_random": means,
        "beats_random": {
            label: {
                k: wins["policies"][label][k]
                for k in ("beats_random", "beats_random_significant", "classes")
            }
            for label in labels
        },
        "spread": spread,
        "points": len(labels),
    }


POINT_FIELDS = (
    "point",
    "target",
    "target_pixels_mean",
    "target_pixels_std",
    "random_target_pixels_mean",
    "target_pixels_over_random",
    "reward_mean",
    "reward_std",
    "random_reward_mean",
    "reward_over_random",
    "hit_rate_mean",
    "random_hit_rate_mean",
)
"""The columns of ``points.csv`` after the swept axes (``points.json`` also has the seeds')."""


def _write_outputs(out: Path, table: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    axes = summary["axes"]
    atomic_write_text(out / "points.json", json.dumps(table, indent=1))
    buffer = io.StringIO()
    fields = [POINT_FIELDS[0], *axes, *POINT_FIELDS[1:]]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(out / "points.csv", buffer.getvalue())
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "summary.md", _markdown(table, summary))
    _heatmaps(out, table, summary)


def _markdown(table: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        f"# MiSiCAL sweep: {summary['agent']}",
        "",
        f"{summary['points']} points x {len(summary['targets'])} targets x {summary['seeds']} "
        f"seeds; budget {summary['budget']}, {summary['pool_size']} candidates per pick, "
        f"{summary['pretrain_steps']} + {summary['online_steps']} training steps. Every point is "
        "compared on the target pixels its picks acquire on the pool, whatever its training "
        "reward; the reward its greedy picks earn under its own scheme is beside it. "
        f"tau=1.0 is a hard target copy every {summary['hard_copy_interval']} env steps.",
        "",
        f"**Best point**: `{summary['best_point']}`, "
        f"{summary['best_target_pixels_over_random']:+.1f} target pixels over random "
        "(mean over targets).",
        "",
        "## Spread across seeds and across settings",
        "",
        "Across seeds: the mean over points of the standard deviation over seeds; across "
        "settings: the standard deviation over points of the mean over seeds. A knob whose "
        "settings spread less than the seeds do changes nothing this sweep can see.",
        "",
        "| target | random | best point | its target pixels | across seeds | across settings |",
        "|---|---|---|---|---|---|",
    ]
    for target, s in summary["spread"].items():
        # One seed has no spread to show; a 0.0 would read as a measured one.
        seeds = f"{s['across_seeds']:.1f}" if summary["seeds"] > 1 else "- (1 seed)"
        lines.append(
            f"| {target} | {s['random_target_pixels']:.0f} | `{s['best_point']}` | "
            f"{s['best_target_pixels']:.0f} | {seeds} | {s['across_settings']:.1f} |"
        )
    lines += [
        "",
        "## Every point",
        "",
        "Mean ± std over seeds; random's mean in brackets. Beats random: classes where the "
        "point's mean is higher (significant: one-sided Mann–Whitney U, p <= 0.05).",
        "",
        "| point | target | target pixels | greedy reward | beats random |",
        "|---|---|---|---|---|",
    ]
    for r in table:
        wins = summary["beats_random"][r["point"]]
        lines.append(
            f"| `{r['point']}` | {r['target']} | {r['target_pixels_mean']:.0f} ± "
            f"{r['target_pixels_std']:.0f} ({r['random_target_pixels_mean']:.0f}) | "
            f"{r['reward_mean']:.2f} ± {r['reward_std']:.2f} ({r['random_reward_mean']:.2f}) | "
            f"{wins['beats_random']} of {wins['classes']} ({wins['beats_random_significant']} "
            "significant) |"
        )
    if "retrain" in summary:
        block = summary["retrain"]
        lines += [
            "",
            retraining_heading(
                block["epochs"],
                block.get("learning_rate"),
                block.get("weighting"),
                block.get("weights_from"),
            ),
            "",
            "The best point of each reward scheme (by target pixels on these classes) and random: "
            "the target's test IoU after the segmenter is fine-tuned on init plus the picks, "
            "mean over seeds.",
            "",
            "| reward | point | " + " | ".join(block["classes"]) + " | mean |",
            "|---|---|" + "---|" * (len(block["classes"]) + 1),
        ]
        for scheme, entry in block["best"].items():
            cells = [_number(entry["iou"][c]) for c in block["classes"]]
            lines.append(
                f"| {scheme} | `{entry['point']}` | "
                + " | ".join(cells)
                + f" | {_number(entry['mean_iou'])} |"
            )
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _heatmaps(out: Path, table: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Per target and pair of swept axes (one axis: a single row): target pixels and greedy
    reward over random, averaged over the other axes' values."""
    axes = summary["axes"]
    if not axes:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(itertools.combinations(axes, 2)) or [(axes[0], None)]
    for target in summary["targets"]:
        rows = [r for r in table if r["target"] == target]
        for a, b in pairs:
            xs = list(dict.fromkeys(r[a] for r in rows))
            ys = list(dict.fromkeys(r[b] for r in rows)) if b else [""]
            fig, panels = plt.subplots(1, 2, figsize=(4 + 1.6 * len(xs), 1.6 + 0.9 * len(ys)))
            for ax, key, title in zip(
                panels,
                ("target_pixels_over_random", "reward_over_random"),
                ("target pixels over random", "greedy reward over random"),
                strict=True,
            ):
                grid = np.array(
                    [
                        [
                            np.mean([r[key] for r in rows if r[a] == x and (not b or r[b] == y)])
                            for x in xs
                        ]
                        for y in ys
                    ]
                )
                limit = float(np.abs(grid).max()) or 1.0
                image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
                for (i, j), value in np.ndenumerate(grid):
                    ax.text(
                        j,
                        i,
                        f"{value:+.0f}" if "pixels" in key else f"{value:+.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        # Readable on the dark ends of the colour map.
                        color="white" if abs(value) > 0.6 * limit else "black",
                    )
                ax.set_xticks(range(len(xs)), xs)
                ax.set_yticks(range(len(ys)), ys)
                ax.set_xlabel(a)
                ax.set_ylabel(b or "")
                ax.set_title(title, fontsize=9)
                fig.colorbar(image, ax=ax, fraction=0.05)
            fig.suptitle(
                f"{target}: {summary['agent']} against random, mean over {summary['seeds']} "
                f"seed{'s' if summary['seeds'] > 1 else ''}",
                fontsize=10,
            )
            fig.tight_layout()
            name = f"heatmap_{safe_name(target)}__{a}" + (f"__{b}" if b else "") + ".png"
            with atomic_path(out / name) as tmp:
                fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", default="ddqn", help="the learned agent to sweep (ddqn)")
    parser.add_argument(
        "--grid",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V1,V2",
        help="the agent's hyperparameters to sweep (for ddqn: DDQNConfig's fields), e.g. "
        "gamma=0,0.5,0.9,0.99 tau=0.001,0.005,0.02,1.0 n_step=1,3,5. tau=1.0 is a hard target "
        f"copy (target_update=hard) every {HARD_COPY_INTERVAL} env steps, unless the grid sets "
        "target_update or target_update_interval",
    )
    parser.add_argument(
        "--env-grid",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V1,V2",
        help="env arguments to sweep, e.g. reward=categorical,binary,share,log_count "
        "features=all,presence,uncertainty (a + joins column names into one list)",
    )
    add_job_arguments(
        parser,
        retrain_help="also fine-tune the segmenter on init plus the picks of the best point of "
        "each reward scheme and of random, on the rare classes, and report the target's test "
        "IoU (needs the store's images)",
    )
    parser.add_argument(
        "--optuna",
        type=int,
        default=None,
        metavar="N",
        help="search N points with Optuna's TPE sampler (seeded) among the grids' values "
        'instead of running all of them (needs pip install "misical-gym[optuna]")',
    )


def main(args: argparse.Namespace) -> int:
    summary = sweep(
        args.store,
        args.out,
        agent=args.agent,
        grid=parse_grid(args.grid, "--grid"),
        env_grid=parse_grid(args.env_grid, "--env-grid"),
        targets="all" if args.targets == "all" else args.targets.split(","),
        budget=args.budget,
        seeds=args.seeds,
        pool_size=args.pool_size,
        pretrain_steps=args.pretrain_steps,
        online_steps=args.online_steps,
        workers=args.workers,
        use_ray=args.ray,
        ray_address=args.ray_address,
        retrain=args.retrain,
        retrain_epochs=args.retrain_epochs,
        retrain_learning_rate=args.retrain_learning_rate,
        retrain_weighting=args.retrain_weighting,
        retrain_weights_from=args.retrain_weights_from,
        optuna_trials=args.optuna,
    )
    print(
        f"best point: {summary['best_point']} "
        f"({summary['best_target_pixels_over_random']:+.1f} target pixels over random)"
    )
    print(f"summary: {Path(args.out) / 'summary.md'}", file=sys.stderr)
    return 0
