"""``misical evaluate``: the paper's table, "beats random on X of C classes", per policy.

For every (target, policy, seed) job the policy picks ``budget`` pool patches without any
retraining; the job records the target pixels acquired, the hit rate (share of picks holding
the target) and the acquisition curve. Learned policies are first trained per target through
:func:`~misical_gym.train.run.run_training` (pretrain on init, continue on pool); those runs are
cached by a hash of their configuration. A policy named ``<agent>-goal`` (e.g. ``ddqn-goal``)
is one goal-conditioned policy per seed, trained once with a new random target every episode
and then asked for each target in turn. With ``--retrain`` a job also fine-tunes the store's
segmenter on init plus its picks (labelled inside the picked patches only) and records the
target's test IoU (:func:`~misical_gym.segmenter.retrain.retrain_iou`). Every finished job is
one JSON file under ``DIR/jobs/``, written atomically, so a killed evaluation resumes where it
stopped and never leaves a half-written row; the tables, the summary, the report and the plots
are rebuilt from those files at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import hashlib
import io
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.atomic import atomic_write_text
from misical_gym.errors import MissingDependencyError
from misical_gym.train.agents import AGENTS, HEURISTIC_AGENTS

DEFAULT_POLICIES = ("ddqn", "dqn", "random", "bald", "entropy", "presence", "supervised")
SIGNIFICANCE = 0.05
"""Level of the one-sided Mann–Whitney U test behind ``beats_random_significant``."""
RESULT_FIELDS = ("target", "target_id", "policy", "seed", "target_pixels", "hit_rate", "iou")


GOAL_SUFFIX = "-goal"
"""``<agent>-goal`` names one goal-conditioned policy per seed (trained with a new random target
every episode) that serves every target, beside the paper's one policy per target."""


def policy_agent(policy: str) -> tuple[str, bool]:
    """The agent a policy name trains, and whether it is goal-conditioned."""
    if policy.endswith(GOAL_SUFFIX):
        agent = policy[: -len(GOAL_SUFFIX)]
        if agent in AGENTS and agent not in HEURISTIC_AGENTS:
            return agent, True
    if policy not in AGENTS:
        learned = [a for a in AGENTS if a not in HEURISTIC_AGENTS]
        raise ValueError(
            f"unknown policy {policy!r}; choose from {', '.join(AGENTS)}, or a learned agent "
            f"with {GOAL_SUFFIX!r} for one goal-conditioned policy ({', '.join(learned)})"
        )
    return policy, False


@contextlib.contextmanager
def _training_lock(cache: Path) -> Iterator[None]:
    """One trainer per cached configuration: the jobs of every target share a goal-conditioned
    policy and may start at once, in other processes."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def job_name(target: str, policy: str, seed: int) -> str:
    return f"{target.replace(' ', '_')}__{policy}__{seed}"


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train if needed, select ``budget`` patches, and score the picks with the oracle counts."""
    import torch

    from misical_gym.store import FeatureStore
    from misical_gym.train.run import run_training
    from misical_gym.train.select import select_patches

    torch.set_num_threads(1)
    policy, target, seed = job["policy"], job["target"], job["seed"]
    agent, goal_conditioned = policy_agent(policy)
    reference = policy
    if agent not in HEURISTIC_AGENTS:
        training = {
            "agent": agent,
            "store": job["store"],
            "target": "random" if goal_conditioned else target,
            "seed": seed,
            "pretrain_steps": job["pretrain_steps"],
            "online_steps": job["online_steps"],
            "pool_size": job["pool_size"],
        }
        key = hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:16]
        cache = Path(job["cache"]) / key
        with _training_lock(cache):
            runs = list(cache.glob(f"*/*/{agent}_{seed}/summary.json"))
            if runs:
                run_dir = runs[0].parent
            else:
                run_dir = run_training(
                    agent,
                    "MiSiCAL-Store",
                    env_kwargs={"root": job["store"], "pool_size": job["pool_size"]},
                    target=training["target"],
                    pretrain_steps=job["pretrain_steps"],
                    online_steps=job["online_steps"],
                    seed=seed,
                    logdir=cache,
                    device="cpu",
                    eval_episodes=1,
                    overwrite=True,
                    progress=False,
                    threads=1,
                )
        reference = str(run_dir)
    selection = select_patches(
        job["store"], reference, target, job["budget"], pool_size=job["pool_size"], seed=seed
    )
    store = FeatureStore.open(job["store"])
    ids = np.array([p["patch_id"] for p in selection["picks"]], dtype=np.int64)
    counts = np.asarray(store.counts[ids, selection["target_id"]], dtype=np.int64)
    iou = None
    if job.get("retrain"):
        from misical_gym.segmenter.retrain import retrain_iou

        value = retrain_iou(
            store, selection["target_id"], ids, seed=seed, epochs=job["retrain_epochs"]
        )
        iou = None if np.isnan(value) else value  # NaN: the class is nowhere in the test split
    return {
        "target": selection["target"],
        "target_id": selection["target_id"],
        "policy": policy,
        "seed": seed,
        "target_pixels": int(counts.sum()),
        "hit_rate": float((counts > 0).mean()) if counts.size else 0.0,
        "iou": iou,
        "retrain_epochs": job["retrain_epochs"] if job.get("retrain") else None,
        "curve": np.cumsum(counts).tolist(),
    }


def evaluate(
    store_path: str | Path,
    out: str | Path,
    *,
    targets: str | list[str] = "all",
    policies: tuple[str, ...] = DEFAULT_POLICIES,
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
    retrain_policies: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run every missing job, then write results, summary, report and plots into ``out``.

    Jobs run one after the other by default, in ``workers`` local processes when
    ``workers > 1``, or as Ray tasks when ``use_ray`` (see :func:`_run_on_ray`); the executor
    does not change the results.

    With ``retrain``, every job also records ``iou``: the target's test IoU after fine-tuning
    the store's segmenter for ``retrain_epochs`` epochs (None: ``DEFAULT_RETRAIN_EPOCHS`` of
    :mod:`misical_gym.segmenter.retrain`) on init plus its picks, and the summary gets an
    ``iou`` block per policy. ``retrain_policies`` (None: all of them, always with random)
    limits retraining, the costly part, to those policies; the others' ``iou`` is None. A job
    file written without retraining, or with other epochs, is run again. Without ``retrain``
    every ``iou`` is None.
    """
    from misical_gym.store import FeatureStore

    if use_ray and workers > 1:
        raise ValueError("--workers and --ray are mutually exclusive: Ray schedules the jobs")
    if ray_address is not None and not use_ray:
        raise ValueError("--ray-address needs --ray")
    if use_ray:
        _import_ray()  # fail before any work when the extra is missing
    store = FeatureStore.open(store_path)
    for policy in policies:
        policy_agent(policy)  # a clear error for an unknown name before any work
    if "random" not in policies:
        raise ValueError("the evaluation compares with random: include it in --policies")
    if budget < 1 or seeds < 1:
        raise ValueError("--budget and --seeds must be positive")
    if retrain:
        from misical_gym.segmenter.retrain import DEFAULT_RETRAIN_EPOCHS, check_retrainable

        retrain_epochs = DEFAULT_RETRAIN_EPOCHS if retrain_epochs is None else retrain_epochs
        if retrain_epochs < 0:
            raise ValueError(f"--retrain-epochs must be non-negative, got {retrain_epochs}")
        check_retrainable(store)  # a clear error before any work
        retrain_policies = policies if retrain_policies is None else tuple(retrain_policies)
        unknown = sorted(set(retrain_policies) - set(policies))
        if unknown:
            raise ValueError(f"--retrain-policies {', '.join(unknown)} not in --policies")
        if "random" not in retrain_policies:
            raise ValueError("IoU is compared with random's: include it in --retrain-policies")
    elif retrain_epochs is not None or retrain_policies is not None:
        raise ValueError("--retrain-epochs and --retrain-policies need --retrain")
    else:
        retrain_policies = ()
    if targets == "all":
        names = [
            n for n, k in zip(store.class_names, store.class_patches("pool"), strict=True) if k
        ]
    else:
        names = [store.class_names[store.class_index(t)] for t in targets]
    out = Path(out)
    jobs_dir = out / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for target in names:
        for policy in policies:
            retrains = policy in retrain_policies
            for seed in range(seeds):
                done = jobs_dir / f"{job_name(target, policy, seed)}.json"
                if not _job_done(done, retrain_epochs if retrains else None):
                    todo.append(
                        {
                            "store": str(store.path.resolve()),
                            "target": target,
                            "policy": policy,
                            "seed": seed,
                            "budget": budget,
                            "pool_size": pool_size,
                            "pretrain_steps": pretrain_steps,
                            "online_steps": online_steps,
                            "cache": str((out / "training").resolve()),
                            "retrain": retrains,
                            "retrain_epochs": retrain_epochs if retrains else None,
                        }
                    )
    from tqdm.auto import tqdm

    todo = longest_first(todo)
    bar = tqdm(total=len(todo), desc="evaluate", unit="job")
    if use_ray:
        for row in _run_on_ray(todo, ray_address):
            _save_job(jobs_dir, row)
            bar.update()
    elif workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for row in pool.map(run_job, todo):
                _save_job(jobs_dir, row)
                bar.update()
    else:
        for job in todo:
            _save_job(jobs_dir, run_job(job))
            bar.update()
    bar.close()
    rows = [json.loads(p.read_text()) for p in sorted(jobs_dir.glob("*.json"))]
    rows = [
        {**r, "iou": r.get("iou") if r["policy"] in retrain_policies else None}
        for r in rows
        if r["target"] in names and r["policy"] in policies
    ]
    summary = summarize(rows, policies, names, store.rare_classes, store.class_names)
    if retrain:
        ious = summarize(
            rows, retrain_policies, names, store.rare_classes, store.class_names, "iou"
        )
        for policy, block in ious["policies"].items():
            summary["policies"][policy]["iou"] = block
        summary["retrain_epochs"] = retrain_epochs
    write_outputs(out, rows, summary)
    return summary


def _job_done(path: Path, retrain_epochs: int | None) -> bool:
    """Whether the job file at ``path`` answers this run: it exists and, when retraining, holds
    an IoU measured with the same epochs (a file from a run without ``--retrain`` does not)."""
    if not path.is_file():
        return False
    if retrain_epochs is None:
        return True
    return json.loads(path.read_text()).get("retrain_epochs") == retrain_epochs


def longest_first(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs that train a policy first, then those that reuse one, then the heuristics.

    A worker that takes a long training last leaves the others idle at the end; and the jobs
    that share a goal-conditioned policy would wait on the one that trains it. The order
    changes no result: every job is seeded on its own.
    """
    trained: set[tuple[str, int]] = set()

    def rank(job: dict[str, Any]) -> int:
        agent, goal_conditioned = policy_agent(job["policy"])
        if agent in HEURISTIC_AGENTS:
            return 2
        if goal_conditioned:
            if (agent, job["seed"]) in trained:
                return 1
            trained.add((agent, job["seed"]))
        return 0

    ranks = [rank(job) for job in jobs]  # in order: the first job of a goal policy trains it
    return [jobs[i] for i in sorted(range(len(jobs)), key=ranks.__getitem__)]  # stable


def _save_job(jobs_dir: Path, row: dict[str, Any]) -> None:
    name = job_name(row["target"], row["policy"], row["seed"])
    atomic_write_text(jobs_dir / f"{name}.json", json.dumps(row))


def _import_ray() -> Any:
    """Ray, imported only when ``--ray`` is asked for: it is an optional extra."""
    try:
        import ray
    except ImportError as error:
        raise MissingDependencyError(
            'Ray is not installed; --ray needs the optional extra: pip install "misical-gym[ray]"'
        ) from error
    return ray


def _run_on_ray(jobs: list[dict[str, Any]], address: str | None) -> Iterator[dict[str, Any]]:
    """Run ``run_job`` on every job as a Ray task; yield each row as soon as its task ends.

    Connects with ``ray.init(address=address)``: an existing cluster at ``address``, or a new
    local one when ``address`` is None (unless ``RAY_ADDRESS`` names one). A connection the
    caller already opened with ``ray.init`` is reused and left open; one opened here is shut
    down at the end. Jobs carry absolute paths (:func:`evaluate` resolves them), so every node
    must see the store (and ``out``) at the same path and have this package installed.
    """
    if not jobs:
        return
    ray = _import_ray()
    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=address)
    pending: list[Any] = []
    try:
        task = ray.remote(num_cpus=1)(run_job)
        pending = [task.remote(job) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        for ref in pending:  # interrupted or failed: do not leave jobs running on the cluster
            ray.cancel(ref)
        if connected_here:
            ray.shutdown()


def summarize(
    rows: list[dict[str, Any]],
    policies: tuple[str, ...],
    targets: list[str],
    rare: tuple[int, ...],
    class_names: tuple[str, ...],
    metric: str = "target_pixels",
) -> dict[str, Any]:
    """Per policy: classes where its mean ``metric`` over seeds beats random's.

    ``metric`` is a row field, ``target_pixels`` or ``iou``; rows where it is None (no IoU:
    the class is in no test image) are left out. ``beats_random_significant`` counts the
    classes where a one-sided Mann–Whitney U test of its per-seed values against random's
    gives p <= 0.05 (with 3 seeds against 3 and no ties, the smallest exact p is 1/20 = 0.05, so
    a strict p < 0.05 could never be met).
    """
    from scipy.stats import mannwhitneyu

    def values(policy: str, target: str) -> np.ndarray:
        return np.array(
            [
                r[metric]
                for r in rows
                if r["policy"] == policy and r["target"] == target and r[metric] is not None
            ],
            dtype=np.float64,
        )

    out: dict[str, Any] = {"policies": {}, "targets": targets, "metric": metric}
    for policy in policies:
        wins, significant, gains = 0, 0, {}
        for target in targets:
            mine, random = values(policy, target), values("random", target)
            if mine.size == 0 or random.size == 0:
                continue
            gains[target] = float(mine.mean() - random.mean())
            if mine.mean() > random.mean():
                wins += 1
                if np.ptp(np.concatenate([mine, random])) > 0:
                    p = mannwhitneyu(mine, random, alternative="greater").pvalue
                    significant += int(p <= SIGNIFICANCE)
        out["policies"][policy] = {
            "beats_random": wins,
            "classes": len(targets),
            "beats_random_significant": significant,
            "gain_over_random": gains,
        }
    if rare:
        out["rare_classes"] = list(rare)
        out["rare_class_names"] = [class_names[c] for c in rare]
    return out


def write_outputs(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    table = [{k: r[k] for k in RESULT_FIELDS} for r in rows]
    atomic_write_text(out / "results.json", json.dumps(table, indent=1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS)
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(out / "results.csv", buffer.getvalue())
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    lines = [
        "# MiSiCAL evaluation",
        "",
        "Target pixels acquired per episode of picks, mean over seeds; a policy beats random on a "
        "class when its mean is higher (significant: one-sided Mann–Whitney U, p <= 0.05).",
        "",
        "| policy | beats random | significant | classes |",
        "|---|---|---|---|",
    ]
    for policy, row in summary["policies"].items():
        lines.append(
            f"| {policy} | {row['beats_random']} | {row['beats_random_significant']} | "
            f"{row['classes']} |"
        )
    if any("iou" in row for row in summary["policies"].values()):
        lines += [
            "",
            f"## IoU after retraining ({summary.get('retrain_epochs')} epochs)",
            "",
            "The target's IoU on the test split after the segmenter is fine-tuned on init plus "
            "the picks (labelled inside the picked patches only), compared with random the "
            "same way; mean IoU over classes and seeds.",
            "",
            "| policy | beats random | significant | classes | mean IoU |",
            "|---|---|---|---|---|",
        ]
        for policy, row in summary["policies"].items():
            if "iou" not in row:
                continue
            iou = row["iou"]
            measured = [r["iou"] for r in rows if r["policy"] == policy and r["iou"] is not None]
            mean = f"{np.mean(measured):.3f}" if measured else "-"
            lines.append(
                f"| {policy} | {iou['beats_random']} | {iou['beats_random_significant']} | "
                f"{iou['classes']} | {mean} |"
            )
    lines += _per_class_table(rows, summary)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    _plots(out, rows, summary)


def _per_class_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """Markdown: per class and policy, mean target pixels over seeds (and mean IoU, if any)."""
    policies = list(summary["policies"])
    rare = set(summary.get("rare_class_names", []))
    lines = [
        "",
        "## Per class",
        "",
        "Mean target pixels over seeds (mean IoU after retraining in brackets, where measured); "
        "rare classes in bold.",
        "",
        "| class | " + " | ".join(policies) + " |",
        "|---|" + "---|" * len(policies),
    ]
    for target in summary["targets"]:
        cells = []
        for policy in policies:
            mine = [r for r in rows if r["target"] == target and r["policy"] == policy]
            if not mine:
                cells.append("-")
                continue
            cell = f"{np.mean([r['target_pixels'] for r in mine]):.0f}"
            ious = [r["iou"] for r in mine if r["iou"] is not None]
            cells.append(cell + (f" ({np.mean(ious):.3f})" if ious else ""))
        name = f"**{target}**" if target in rare else target
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _plots(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = [p for p in summary["policies"] if p != "random"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for policy in policies:
        gains = sorted(summary["policies"][policy]["gain_over_random"].values(), reverse=True)
        ax.plot(range(1, len(gains) + 1), gains, marker=".", label=policy)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("classes, sorted by gain")
    ax.set_ylabel("target pixels over random")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gain_over_random.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    for policy in summary["policies"]:
        curves = [r["curve"] for r in rows if r["policy"] == policy]
        if curves:
            length = min(len(c) for c in curves)
            ax.plot(np.mean([c[:length] for c in curves], axis=0), label=policy)
    ax.set_xlabel("patches picked")
    ax.set_ylabel("target pixels acquired (mean over classes and seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "acquisition.png", dpi=100)
    plt.close(fig)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--targets", default="all", help="all, or comma-separated class names")
    parser.add_argument(
        "--policies",
        default=",".join(DEFAULT_POLICIES),
        help="comma-separated agents; <agent>-goal is one goal-conditioned policy (ddqn-goal)",
    )
    parser.add_argument("--budget", type=int, default=100, help="patches per selection (100)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pool-size", type=int, default=32)
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--online-steps", type=int, default=1000)
    executor = parser.add_mutually_exclusive_group()
    executor.add_argument(
        "--workers", type=int, default=1, metavar="N", help="run the jobs in N local processes (1)"
    )
    executor.add_argument(
        "--ray",
        action="store_true",
        help='run the jobs as Ray tasks (needs pip install "misical-gym[ray]")',
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="with --ray: the cluster to connect to (default: start a local one)",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="also fine-tune the segmenter on init plus each job's picks (labelled inside the "
        "picked patches only) and record the target's test IoU (needs the store's images)",
    )
    parser.add_argument(
        "--retrain-epochs",
        type=int,
        default=None,
        metavar="N",
        help="with --retrain: fine-tuning epochs (32)",
    )
    parser.add_argument(
        "--retrain-policies",
        default=None,
        metavar="P1,P2",
        help="with --retrain: retrain only after these policies' picks (default: all; "
        "must include random)",
    )
    parser.add_argument("--out", type=Path, required=True)


def main(args: argparse.Namespace) -> int:
    summary = evaluate(
        args.store,
        args.out,
        targets="all" if args.targets == "all" else args.targets.split(","),
        policies=tuple(args.policies.split(",")),
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
        retrain_policies=None
        if args.retrain_policies is None
        else tuple(args.retrain_policies.split(",")),
    )
    for policy, row in summary["policies"].items():
        print(f"{policy}: beats random on {row['beats_random']} of {row['classes']} classes")
        if "iou" in row:
            print(
                f"{policy}: IoU after retraining beats random on {row['iou']['beats_random']} "
                f"of {row['iou']['classes']} classes"
            )
    print(f"report: {args.out / 'report.md'}", file=sys.stderr)
    return 0
