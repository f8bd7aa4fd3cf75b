"""Why one policy's picks retrain to a lower IoU than another's: the target's errors, split.

``misical evaluate --retrain`` reports one number per job, the target's test IoU after the
segmenter is fine-tuned on init plus the job's picks. IoU = TP / (TP + FP + FN) falls both when
the fine-tuned model misses target pixels (FN) and when it paints the target where there is
none (FP). This script makes the same picks as the evaluation (the same jobs: the same policy
training, episodes and seeds), fine-tunes with the same settings, and prints, per class, policy
and seed, the picks' target pixels, the target's TP, FP and FN on the test split, precision,
recall and IoU, and the classes its errors go to, beside the frozen segmenter's own.

Usage: ``python benchmarks/retrain_breakdown.py --store DIR --cache DIR [--classes A,B]
[--policies ddqn,random] [--seeds 3] [--budget 100] [--weighting sqrt] [--weights-from init]
[--workers 2]``. ``--cache`` holds the trained policies; an evaluation's ``OUT/training``
folder reuses its own. ``--weights-from init`` takes the fine-tuning's class weights from the
init images' labels, the same after every policy's picks, instead of the evaluation's
fine-tuning crops. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from misical_gym.train.jobs import Job


def target_errors(confusion: np.ndarray, target: int, class_names: tuple[str, ...]) -> dict:
    """The target's TP, FP, FN, precision, recall and IoU from a (true, predicted) matrix, and
    the two classes most of its misses are predicted as and most of its false alarms truly are."""
    tp = int(confusion[target, target])
    fn_row = confusion[target].copy()
    fn_row[target] = 0
    fp_col = confusion[:, target].copy()
    fp_col[target] = 0
    fn, fp = int(fn_row.sum()), int(fp_col.sum())

    def ratio(num: int, den: int) -> float | None:
        return round(num / den, 4) if den else None

    def top(counts: np.ndarray) -> dict[str, int]:
        order = np.argsort(counts)[::-1][:2]
        return {class_names[i]: int(counts[i]) for i in order if counts[i] > 0}

    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "missed_as": top(fn_row),
        "false_alarms_from": top(fp_col),
    }


def run_breakdown(job: Job) -> dict:
    """Pick as the evaluation's ``job`` does, fine-tune as it does, and split the target's test
    errors."""
    from misical_gym.segmenter.retrain import retrain_confusion
    from misical_gym.train.jobs import job_picks

    assert job.retrain_epochs is not None and job.retrain_learning_rate is not None
    assert job.retrain_weighting is not None and job.retrain_weights_from is not None
    start = time.perf_counter()
    selection, store, ids = job_picks(job)
    confusion = retrain_confusion(
        store,
        ids,
        seed=job.seed,
        epochs=job.retrain_epochs,
        learning_rate=job.retrain_learning_rate,
        class_weighting=job.retrain_weighting,
        weights_from=job.retrain_weights_from,
    )
    target = selection["target_id"]
    return {
        "seed": job.seed,
        "target_pixels": int(np.asarray(store.counts[ids, target], dtype=np.int64).sum()),
        **target_errors(confusion, target, store.class_names),
        "seconds": round(time.perf_counter() - start, 1),
    }


def mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return round(float(np.mean(values)), 4) if values else None


def main() -> None:
    from misical_gym.segmenter.retrain import DEFAULT_RETRAIN_EPOCHS, RETRAIN_CONFIG, WEIGHTS_FROM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="a store `misical prepare` wrote")
    parser.add_argument(
        "--cache",
        type=Path,
        required=True,
        help="folder of trained policies (an evaluation's OUT/training reuses its own)",
    )
    parser.add_argument("--classes", help="comma-separated names (default: the rare classes)")
    parser.add_argument("--policies", default="ddqn,random", help="(default: ddqn,random)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=32)
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--online-steps", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=DEFAULT_RETRAIN_EPOCHS)
    parser.add_argument("--learning-rate", type=float, default=RETRAIN_CONFIG.learning_rate)
    parser.add_argument(
        "--weighting",
        default=RETRAIN_CONFIG.class_weighting,
        help=f"the fine-tuning's class weighting (default: {RETRAIN_CONFIG.class_weighting})",
    )
    parser.add_argument(
        "--weights-from",
        choices=WEIGHTS_FROM,
        default="crops",
        help="the labels the class weights come from: the fine-tuning crops' (the evaluation's) "
        "or the init images' (the same for every policy)",
    )
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.seeds < 1 or args.budget < 1 or args.workers < 1:
        raise SystemExit("--seeds, --budget and --workers must be at least 1")

    from tqdm.auto import tqdm

    from misical_gym.segmenter.retrain import retrain_confusion
    from misical_gym.store import FeatureStore
    from misical_gym.train.evaluate import evaluation_jobs, retraining_settings
    from misical_gym.train.executors import map_jobs

    store = FeatureStore.open(args.store)
    try:
        retraining = retraining_settings(
            store, args.epochs, args.learning_rate, args.weighting, args.weights_from
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    names = (
        args.classes.split(",")
        if args.classes
        else [store.class_names[c] for c in store.rare_classes]
    )
    policies = args.policies.split(",")
    jobs = evaluation_jobs(
        store,
        args.cache,
        names,
        policies,
        args.seeds,
        budget=args.budget,
        pool_size=args.pool_size,
        pretrain_steps=args.pretrain_steps,
        online_steps=args.online_steps,
        retraining=retraining,
        retrain_policies=policies,
    )
    frozen = retrain_confusion(store, [], epochs=0)
    report: dict[str, Any] = {
        "store": store.path.name,
        "budget": args.budget,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "weighting": args.weighting,
        "weights_from": args.weights_from,
        "classes": {
            name: {
                "frozen": target_errors(frozen, store.class_index(name), store.class_names),
                **{policy: {"seeds": []} for policy in policies},
            }
            for name in names
        },
    }
    done = map_jobs(run_breakdown, jobs, workers=args.workers)
    for job, row in tqdm(done, total=len(jobs), desc="retrain", unit="job"):
        report["classes"][job.target][job.policy]["seeds"].append(row)
    for block in report["classes"].values():
        for policy in policies:
            rows = sorted(block[policy]["seeds"], key=lambda r: r["seed"])
            block[policy] = {
                "seeds": rows,
                **{
                    f"mean_{key}": mean_of(rows, key)
                    for key in ("target_pixels", "tp", "fp", "fn", "precision", "recall", "iou")
                },
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
