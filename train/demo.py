"""``misical demo``: the whole MiSiCAL story on the offline synthetic world, in one command.

1. Prepare the synthetic store: train the segmenter on init, freeze it, extract every patch's
   MC-dropout features (an existing store is reused).
2. Train a DDQN for every designed rare class, and one goal-conditioned DDQN for all of them.
3. Compare them with random, BALD, entropy, presence-greedy, the supervised ablation and SB3's
   DQN: the target pixels each policy's picks acquire from the pool, without retraining.
4. Retrain the segmenter on init plus the per-class DDQN's picks, and on random's, and measure
   the rare class's IoU after each.
5. Write the report, the results and the plots (``misical evaluate``'s outputs).
6. Print where the report and the TensorBoard logs are.

Every stage resumes: run the same command again after an interruption.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_POLICIES = (
    "ddqn",
    "ddqn-goal",
    "dqn",
    "supervised",
    "random",
    "bald",
    "entropy",
    "presence",
)


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings: the synthetic world, the training budget, the evaluation."""

    store_name: str
    """Store under ``$MISICAL_HOME`` (else ``~/.cache/misical``); reused when it exists."""
    images: int
    """Synthetic images to generate."""
    epochs: int
    """Segmenter training epochs on init."""
    mc_samples: int
    """MC-dropout samples T per image."""
    pretrain_steps: int
    """Env steps of every learned policy on init (labels known)."""
    online_steps: int
    """Then env steps on pool (labels revealed as patches are acquired)."""
    budget: int
    """Pool patches each policy picks per target and seed."""
    seeds: int
    """Seeds per (target, policy)."""
    retrain_epochs: int | None
    """Epochs of the segmenter's fine-tuning on init plus the picks (None: the evaluation's
    default)."""
    retrain_policies: tuple[str, ...] | None
    """Policies whose picks are retrained on (None: all). Retraining is the evaluation's
    costliest step, so the full demo measures IoU for the DDQN against random only."""


FULL = DemoConfig(
    store_name="synthetic",
    images=3000,
    epochs=20,
    mc_samples=20,
    # Most of the demo's time is the DDQN's gradient steps, one per env step after its first
    # 500: 1,000 + 500 steps take 1,000 of them where 3,000 + 1,000 took 3,500.
    pretrain_steps=1000,
    online_steps=500,
    budget=100,
    seeds=1,
    retrain_epochs=None,
    retrain_policies=("ddqn", "random"),
)
QUICK = DemoConfig(
    store_name="synthetic-quick",
    images=800,
    epochs=6,
    mc_samples=10,
    pretrain_steps=400,
    online_steps=100,
    budget=50,
    seeds=1,
    retrain_epochs=1,
    retrain_policies=None,
)


def run_demo(
    out: str | Path,
    config: DemoConfig = FULL,
    *,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns ``misical evaluate``'s summary."""
    from misical_gym.paths import default_store_path
    from misical_gym.prepare import prepare_synthetic
    from misical_gym.store import MANIFEST, FeatureStore
    from misical_gym.train.evaluate import evaluate
    from misical_gym.train.executors import check_executor

    check_executor(workers, use_ray=False)  # before the store is prepared
    out = Path(out)
    start = time.time()
    path = default_store_path(config.store_name)
    if (path / MANIFEST).is_file():
        _say(f"1/3 using the prepared synthetic store at {path}")
        store = FeatureStore.open(path)
    else:
        _say(f"1/3 preparing the synthetic store at {path}")
        store = prepare_synthetic(
            path,
            images=config.images,
            epochs=config.epochs,
            mc_samples=config.mc_samples,
            progress=progress,
        )
    rare = [store.class_names[c] for c in store.rare_classes]
    retrained = config.retrain_policies
    _say(
        f"2/3 training and comparing {', '.join(DEMO_POLICIES)} on the rare classes "
        f"{', '.join(rare)}, then retraining the segmenter on the picks of "
        + ("every policy" if retrained is None else " and ".join(retrained))
    )
    summary = evaluate(
        store.path,
        out,
        targets=rare,
        policies=DEMO_POLICIES,
        budget=config.budget,
        seeds=config.seeds,
        pretrain_steps=config.pretrain_steps,
        online_steps=config.online_steps,
        workers=workers,
        retrain=True,
        retrain_epochs=config.retrain_epochs,
        retrain_policies=config.retrain_policies,
    )
    _say(f"3/3 done in {time.time() - start:.0f} s")
    return summary


def _say(message: str) -> None:
    print(f"misical demo: {message}", file=sys.stderr, flush=True)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smaller world and shorter training: about a minute, for a first look",
    )
    parser.add_argument(
        "--out", type=Path, help="output directory (default: misical-demo, or misical-demo-quick)"
    )
    parser.add_argument("--workers", type=int, default=2, help="local processes (2)")
    parser.add_argument("--seeds", type=int, help="seeds per target and policy (1)")


def main(args: argparse.Namespace) -> int:
    config = QUICK if args.quick else FULL
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
        config = dataclasses.replace(config, seeds=args.seeds)
    out = args.out or Path("misical-demo-quick" if args.quick else "misical-demo")
    summary = run_demo(out, config, workers=args.workers)
    for policy, row in summary["policies"].items():
        line = (
            f"{policy:>10}: beats random on {row['beats_random']} of {row['classes']} rare classes"
        )
        if "iou" in row:
            line += f" in target pixels, on {row['iou']['beats_random']} in IoU after retraining"
        print(line)
    print(f"report:      {out / 'report.md'}")
    print(f"results:     {out / 'results.csv'}, {out / 'summary.json'}")
    print(f"plots:       {out / 'gain_over_random.png'}, {out / 'acquisition.png'}")
    print(f"tensorboard: tensorboard --logdir {out / 'training'}")
    return 0
