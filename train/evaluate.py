"""``misical evaluate``: the paper's table, "beats random on X of C classes", per policy.

For every (target, policy, seed) job the policy picks ``budget`` pool patches without any
retraining; the job records the target pixels acquired, the hit rate (share of picks holding
the target) and the acquisition curve. Learned policies are first trained per target through
:func:`~misical_gym.train.run.run_training` (pretrain on init, continue on pool); those runs are
cached by a digest of their configuration. A policy named ``<agent>-goal`` (e.g. ``ddqn-goal``)
is one goal-conditioned policy per seed, trained once with a new random target every episode
and then asked for each target in turn. With ``--retrain`` a job also fine-tunes the store's
segmenter on init plus its picks (labelled inside the picked patches only) and records the
target's test IoU (:func:`~misical_gym.segmenter.retrain.retrain_iou`).

The pieces, in the order the data flows: :mod:`~misical_gym.train.jobs` plans and runs jobs,
:mod:`~misical_gym.train.executors` maps them (serially, in processes, on Ray),
:mod:`~misical_gym.train.statistics` counts the wins, :mod:`~misical_gym.train.report` and
:mod:`~misical_gym.train.plots` write the outputs. Every finished job is one JSON file under
``DIR/jobs/``, written atomically and keyed by the digest of everything that determines it, so
a killed evaluation resumes where it stopped, a changed setting (budget, store, steps...) runs
its jobs again, and the outputs hold exactly the requested jobs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from misical_gym.atomic import atomic_write_text
from misical_gym.train.executors import check_executor, import_ray, map_jobs
from misical_gym.train.jobs import RETRAINING_FIELDS, Job, longest_first, policy_agent, run_job
from misical_gym.train.report import write_outputs
from misical_gym.train.statistics import summarize

if TYPE_CHECKING:
    from misical_gym.store import FeatureStore

DEFAULT_POLICIES = ("ddqn", "dqn", "random", "bald", "entropy", "presence", "supervised")


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
    retrain_learning_rate: float | None = None,
    retrain_weighting: str | None = None,
    retrain_weights_from: str | None = None,
    retrain_policies: tuple[str, ...] | None = None,
    select_mode: str = "episode",
) -> dict[str, Any]:
    """Run every missing job, then write results, summary, report and plots into ``out``.

    Jobs run one after the other by default, in ``workers`` local processes when
    ``workers > 1``, or as Ray tasks when ``use_ray``; the executor does not change the
    results.

    With ``retrain``, every job also records ``iou``: the target's test IoU after fine-tuning
    the store's segmenter for ``retrain_epochs`` epochs at ``retrain_learning_rate`` with
    ``retrain_weighting`` class weights computed from ``retrain_weights_from``'s labels (None:
    ``DEFAULT_RETRAIN_EPOCHS``, ``RETRAIN_CONFIG``'s and ``crops``; see
    :func:`~misical_gym.segmenter.retrain.retrain_confusion`) on init plus its picks, and
    the summary gets an ``iou`` block per policy. ``retrain_policies`` (None: all of them,
    always with random) limits retraining, the costly part, to those policies; the others'
    ``iou`` is None.
    Without ``retrain`` every ``iou`` is None.

    ``select_mode`` is how every policy selects: ``"episode"`` (the paper's protocol) or
    ``"rank"`` (the best ``budget`` of the whole pool by the policy's own score).
    """
    from misical_gym.store import FeatureStore

    check_run_settings(workers, use_ray, ray_address, budget, seeds)
    store = FeatureStore.open(store_path)
    for policy in policies:
        policy_agent(policy)  # a clear error for an unknown name before any work
    if "random" not in policies:
        raise ValueError("the evaluation compares with random: include it in --policies")
    from misical_gym.train.select import MODES

    if select_mode not in MODES:
        raise ValueError(f"unknown select mode {select_mode!r}; choose one of {', '.join(MODES)}")
    retraining: dict[str, Any] | None = None
    if retrain:
        retraining = retraining_settings(
            store, retrain_epochs, retrain_learning_rate, retrain_weighting, retrain_weights_from
        )
        retrain_policies = policies if retrain_policies is None else tuple(retrain_policies)
        unknown = sorted(set(retrain_policies) - set(policies))
        if unknown:
            raise ValueError(f"--retrain-policies {', '.join(unknown)} not in --policies")
        if "random" not in retrain_policies:
            raise ValueError("IoU is compared with random's: include it in --retrain-policies")
    elif retrain_policies is not None:
        raise ValueError("--retrain-policies needs --retrain")
    else:
        check_no_retraining(
            retrain_epochs, retrain_learning_rate, retrain_weighting, retrain_weights_from
        )
        retrain_policies = ()
    names = target_names(store, targets)
    out = Path(out)
    jobs = evaluation_jobs(
        store,
        out / "training",
        names,
        policies,
        seeds,
        budget=budget,
        pool_size=pool_size,
        pretrain_steps=pretrain_steps,
        online_steps=online_steps,
        select_mode=select_mode,
        retraining=retraining,
        retrain_policies=retrain_policies,
    )
    rows = run_missing_jobs(
        jobs, out / "jobs", workers=workers, use_ray=use_ray, ray_address=ray_address
    )
    # Sorted as text by target, policy and seed: the row order the results files have had.
    table = [rows[job] for job in sorted(jobs, key=_row_order)]
    summary = summarize(table, policies, names, store.rare_classes, store.class_names)
    if retrain:
        ious = summarize(
            table, retrain_policies, names, store.rare_classes, store.class_names, "iou"
        )
        for policy, block in ious["policies"].items():
            summary["policies"][policy]["iou"] = block
        summary.update(retraining or {})
    write_outputs(out, table, summary)
    return summary


def evaluation_jobs(
    store: FeatureStore,
    cache: Path,
    targets: Sequence[str],
    policies: Sequence[str],
    seeds: int,
    *,
    budget: int,
    pool_size: int,
    pretrain_steps: int,
    online_steps: int,
    select_mode: str = "episode",
    retraining: dict[str, Any] | None = None,
    retrain_policies: Sequence[str] = (),
) -> list[Job]:
    """The evaluation's jobs, one per target, policy and seed, training policies into ``cache``.

    The jobs of ``retrain_policies`` fine-tune with ``retraining``
    (:func:`retraining_settings`'s); the others do not retrain.
    """
    return [
        Job(
            store=str(store.path.resolve()),
            store_fingerprint=store.fingerprint,
            target=target,
            target_id=store.class_index(target),
            policy=policy,
            seed=seed,
            budget=budget,
            pool_size=pool_size,
            pretrain_steps=pretrain_steps,
            online_steps=online_steps,
            retrain=policy in retrain_policies,
            cache=str(cache.resolve()),
            select_mode=select_mode,
            **(
                retraining
                if retraining is not None and policy in retrain_policies
                else dict.fromkeys(RETRAINING_FIELDS)
            ),
        )
        for target in targets
        for policy in policies
        for seed in range(seeds)
    ]


def check_run_settings(
    workers: int, use_ray: bool, ray_address: str | None, budget: int, seeds: int
) -> None:
    """Raise ValueError (or MissingDependencyError for Ray) before any work unless the
    executor, ``budget`` and ``seeds`` are valid: the checks of evaluate and sweep."""
    check_executor(workers, use_ray)
    if ray_address is not None and not use_ray:
        raise ValueError("--ray-address needs --ray")
    if use_ray:
        import_ray()  # fail before any work when the extra is missing
    if budget < 1 or seeds < 1:
        raise ValueError("--budget and --seeds must be positive")


def retraining_settings(
    store: FeatureStore,
    epochs: int | None,
    learning_rate: float | None,
    weighting: str | None,
    weights_from: str | None = None,
) -> dict[str, Any]:
    """``--retrain-epochs``, ``--retrain-learning-rate``, ``--retrain-weighting`` and
    ``--retrain-weights-from`` (None: the defaults), checked, with the store checked
    retrainable: a clear error before any work.

    Returns:
        The settings by their :class:`Job` field names (:data:`RETRAINING_FIELDS`).
    """
    from misical_gym.segmenter.retrain import (
        DEFAULT_RETRAIN_EPOCHS,
        RETRAIN_CONFIG,
        WEIGHTS_FROM,
        check_retrainable,
    )
    from misical_gym.segmenter.training import CLASS_WEIGHTINGS

    epochs = DEFAULT_RETRAIN_EPOCHS if epochs is None else epochs
    learning_rate = RETRAIN_CONFIG.learning_rate if learning_rate is None else learning_rate
    weighting = RETRAIN_CONFIG.class_weighting if weighting is None else weighting
    weights_from = "crops" if weights_from is None else weights_from
    if epochs < 0:
        raise ValueError(f"--retrain-epochs must be non-negative, got {epochs}")
    if not learning_rate > 0:  # NaN too
        raise ValueError(f"--retrain-learning-rate must be positive, got {learning_rate}")
    if weighting not in CLASS_WEIGHTINGS:
        raise ValueError(
            f"--retrain-weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, got {weighting!r}"
        )
    if weights_from not in WEIGHTS_FROM:
        raise ValueError(
            f"--retrain-weights-from must be one of {', '.join(WEIGHTS_FROM)}, got {weights_from!r}"
        )
    check_retrainable(store)
    values = (epochs, float(learning_rate), weighting, weights_from)
    return dict(zip(RETRAINING_FIELDS, values, strict=True))


def check_no_retraining(*settings: object) -> None:
    """Raise ValueError when a fine-tuning setting is given without ``--retrain``."""
    if any(setting is not None for setting in settings):
        raise ValueError(
            "--retrain-epochs, --retrain-learning-rate, --retrain-weighting and "
            "--retrain-weights-from need --retrain"
        )


def target_names(store: FeatureStore, targets: str | list[str]) -> list[str]:
    """``--targets``: ``"all"`` (every class in the pool) or names, as the store spells them."""
    if targets == "all":
        return [n for n, k in zip(store.class_names, store.class_patches("pool"), strict=True) if k]
    return [store.class_names[store.class_index(t)] for t in targets]


def run_missing_jobs(
    jobs: list[Job],
    jobs_dir: Path,
    *,
    workers: int = 1,
    use_ray: bool = False,
    ray_address: str | None = None,
    desc: str = "evaluate",
) -> dict[Job, dict[str, Any]]:
    """Every job's row: from its job file in ``jobs_dir`` when one answers it, else run now
    (on the executor asked for) and written there atomically as soon as it ends."""
    from tqdm.auto import tqdm

    jobs_dir.mkdir(parents=True, exist_ok=True)
    finished = {job: _finished_row(jobs_dir, job) for job in jobs}
    rows = {job: row for job, row in finished.items() if row is not None}
    todo = longest_first([job for job, row in finished.items() if row is None])
    with tqdm(total=len(todo), desc=desc, unit="job") as bar:
        for job, row in map_jobs(
            run_job, todo, workers=workers, use_ray=use_ray, ray_address=ray_address
        ):
            record = {"digest": job.digest, "row": row}
            atomic_write_text(jobs_dir / job.file_name, json.dumps(record))
            rows[job] = row
            bar.update()
    return rows


def _row_order(job: Job) -> str:
    return f"{job.target.replace(' ', '_')}__{job.policy}__{job.seed}.json"


def _finished_row(jobs_dir: Path, job: Job) -> dict[str, Any] | None:
    """The row of ``job`` from its job file, or None when it has to run: no file, a damaged
    one, or one that answers another job (:meth:`Job.answered_by`)."""
    path = jobs_dir / job.file_name
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"misical: {path} is unreadable ({exc}); running its job again", file=sys.stderr)
        return None
    return job.answered_by(record)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument(
        "--policies",
        default=",".join(DEFAULT_POLICIES),
        help="comma-separated agents; <agent>-goal is one goal-conditioned policy (ddqn-goal)",
    )
    parser.add_argument(
        "--retrain-policies",
        default=None,
        metavar="P1,P2",
        help="with --retrain: retrain only after these policies' picks (default: all; "
        "must include random)",
    )
    parser.add_argument(
        "--select-mode",
        default="episode",
        choices=["episode", "rank"],
        help="how every policy selects: episode (default: the paper's protocol, best of "
        "--pool-size candidates per pick) or rank (the best --budget of the whole pool)",
    )


def add_job_arguments(
    parser: argparse.ArgumentParser,
    retrain_help: str = "also fine-tune the segmenter on init plus each job's picks (labelled "
    "inside the picked patches only) and record the target's test IoU (needs the store's images)",
) -> None:
    """The flags of ``misical evaluate`` that ``misical sweep`` takes too: the store, the
    targets, the jobs' settings, the executor, retraining (``retrain_help`` says what it
    retrains after) and ``--out``."""
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--targets", default="all", help="all, or comma-separated class names")
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
        help=retrain_help,
    )
    parser.add_argument(
        "--retrain-epochs",
        type=int,
        default=None,
        metavar="N",
        help="with --retrain: fine-tuning epochs (32)",
    )
    parser.add_argument(
        "--retrain-learning-rate",
        type=float,
        default=None,
        metavar="LR",
        help="with --retrain: the fine-tuning's Adam learning rate (3e-3)",
    )
    parser.add_argument(
        "--retrain-weighting",
        default=None,
        choices=["inverse", "sqrt", "none"],
        help="with --retrain: the fine-tuning's class weights (inverse)",
    )
    parser.add_argument(
        "--retrain-weights-from",
        default=None,
        choices=["crops", "init"],
        help="with --retrain: the labels the class weights are computed from: the fine-tuning "
        "crops' (default), or the init images' (the same weights after every policy's picks)",
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
        retrain_learning_rate=args.retrain_learning_rate,
        retrain_weighting=args.retrain_weighting,
        retrain_weights_from=args.retrain_weights_from,
        retrain_policies=None
        if args.retrain_policies is None
        else tuple(args.retrain_policies.split(",")),
        select_mode=args.select_mode,
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
