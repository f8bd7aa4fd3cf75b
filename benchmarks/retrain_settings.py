"""Which fine-tuning lets good picks add to the frozen segmenter: the oracle's picks retrained on.

``misical evaluate --retrain`` measures what a policy's picks are worth by fine-tuning the frozen
segmenter on init plus the picks. That measurement only ranks picks by what they hold if the
fine-tuning itself improves on the frozen segmenter when the picks are good. This script takes
the best picks there are, the ``oracle``'s (which reads the true counts, in the evaluation's
episode protocol), and for every fine-tuning setting and every class (default: the store's rare
classes) fine-tunes on them and measures the class's test IoU, beside the frozen segmenter's
own. A setting is ``LR:WEIGHTING[:FROM]``: the learning rate, the class weighting, and the labels
the weights are computed from (``crops``, the default, or ``init``). Prints one JSON object: per
setting, the IoU per class, how many classes end above the frozen segmenter and the mean gain
over it.

Choose the setting here, on the oracle's picks, before the policies' picks are retrained with it:
the choice then cannot favour one policy.

Usage: ``python benchmarks/retrain_settings.py --store DIR [--classes A,B] [--settings
3e-3:inverse,3e-3:sqrt,3e-3:sqrt:init] [--budget 100] [--seed 0] [--epochs 32]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def rounded(value: float | None) -> float | None:
    """``value`` to 4 places; None for a class the test split lacks (NaN or None)."""
    return None if value is None or np.isnan(value) else round(float(value), 4)


def parse_settings(text: str) -> list[tuple[float, str, str]]:
    """``LR:WEIGHTING[:FROM],...`` as ``[(lr, weighting, weights_from), ...]``, checked
    (``FROM`` defaults to ``crops``)."""
    from misical_gym.segmenter.retrain import WEIGHTS_FROM
    from misical_gym.segmenter.training import CLASS_WEIGHTINGS

    settings = []
    for item in text.split(","):
        rate, _, rest = item.partition(":")
        weighting, _, weights_from = rest.partition(":")
        weights_from = weights_from or "crops"
        try:
            valid = float(rate) > 0
        except ValueError:
            valid = False
        if not valid or weighting not in CLASS_WEIGHTINGS or weights_from not in WEIGHTS_FROM:
            raise SystemExit(
                f"--settings takes LR:WEIGHTING[:FROM] items with LR > 0, WEIGHTING one of "
                f"{', '.join(CLASS_WEIGHTINGS)} and FROM one of {', '.join(WEIGHTS_FROM)}; "
                f"got {item!r}"
            )
        settings.append((float(rate), weighting, weights_from))
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="a store `misical prepare` wrote")
    parser.add_argument("--classes", help="comma-separated names (default: the rare classes)")
    parser.add_argument(
        "--settings",
        default="3e-3:inverse,3e-3:sqrt",
        help="comma-separated LR:WEIGHTING[:FROM] fine-tuning settings, FROM crops (default) or "
        "init (default: 3e-3:inverse,3e-3:sqrt)",
    )
    parser.add_argument("--budget", type=int, default=100, help="oracle picks per class (100)")
    parser.add_argument("--seed", type=int, default=0, help="episode and fine-tuning seed (0)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (the evaluation's default)")
    args = parser.parse_args()
    settings = parse_settings(args.settings)

    from misical_gym.segmenter.retrain import DEFAULT_RETRAIN_EPOCHS, retrain_iou
    from misical_gym.store import FeatureStore
    from misical_gym.train.select import select_patches

    store = FeatureStore.open(args.store)
    names = (
        args.classes.split(",")
        if args.classes
        else [store.class_names[c] for c in store.rare_classes]
    )
    epochs = DEFAULT_RETRAIN_EPOCHS if args.epochs is None else args.epochs
    test_iou = store.manifest["segmenter"]["test_iou"]
    frozen = {name: rounded(test_iou[store.class_index(name)]) for name in names}
    picks = {}
    for name in names:
        selection = select_patches(
            args.store, "oracle", name, args.budget, seed=args.seed, device="cpu"
        )
        picks[name] = np.array([p["patch_id"] for p in selection["picks"]], dtype=np.int64)
    report: dict = {
        "store": store.path.name,
        "budget": args.budget,
        "seed": args.seed,
        "epochs": epochs,
        "oracle_target_pixels": {
            name: int(np.asarray(store.counts[ids, store.class_index(name)]).sum())
            for name, ids in picks.items()
        },
        "frozen_iou": frozen,
        "settings": [],
    }
    for rate, weighting, weights_from in settings:
        start = time.perf_counter()
        iou = {
            name: retrain_iou(
                store,
                name,
                ids,
                seed=args.seed,
                epochs=epochs,
                learning_rate=rate,
                class_weighting=weighting,
                weights_from=weights_from,
            )
            for name, ids in picks.items()
        }
        iou = {name: rounded(value) for name, value in iou.items()}
        # A class without test pixels has no IoU to gain; it is left out of the counts.
        gains = [
            iou[name] - frozen[name]  # type: ignore[operator]
            for name in names
            if iou[name] is not None and frozen[name] is not None
        ]
        report["settings"].append(
            {
                "learning_rate": rate,
                "weighting": weighting,
                "weights_from": weights_from,
                "iou": iou,
                "above_frozen": int(sum(gain > 0 for gain in gains)),
                "mean_gain_over_frozen": round(float(np.mean(gains)), 4) if gains else None,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
