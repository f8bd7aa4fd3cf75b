"""How much a class's own presence score says about it, per rare class of a store's split.

For each designed rare class (or ``--classes``), on the pool (or ``--split``): the ROC AUC of
the frozen segmenter's ``presence:<class>`` feature for "the patch holds the class", and how
many of the 100 patches with the highest score hold it. A high AUC means presence-greedy is
already a strong policy for that class and the context MiSiCAL exploits matters less. Prints
one JSON object.

On ``--split init`` the scores come from a segmenter trained on those very images, which is
what an agent trained on init sees.

Usage: ``python benchmarks/presence_signal.py [--store DIR] [--classes skis,fork] [--split init]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import rankdata


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive outranks a negative (Mann–Whitney form, ties averaged)."""
    ranks = rankdata(score)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a prepared store (default: the synthetic one)")
    parser.add_argument("--classes", help="comma-separated names (default: the rare classes)")
    parser.add_argument(
        "--split",
        default="pool",
        choices=["init", "pool", "test"],
        help="the patches scored (pool); init is what the segmenter was trained on",
    )
    args = parser.parse_args()

    from misical_gym.paths import default_store_path
    from misical_gym.store import FeatureStore

    store = FeatureStore.open(args.store or default_store_path("synthetic"))
    if args.classes:
        classes = [store.class_index(name) for name in args.classes.split(",")]
    else:
        classes = list(store.rare_classes)
    if not classes:
        raise SystemExit("this store has no designed rare classes: pass --classes")
    patches = store.split_ids(args.split)
    names = list(store.feature_names)
    report = {
        "store": store.path.name,
        "split": args.split,
        "patches": int(patches.size),
        "classes": {},
    }
    for c in classes:
        column = names.index(f"presence:{store.class_names[c]}")
        score = np.asarray(store.features[patches, column])
        holds = np.asarray(store.counts[patches, c]) > 0
        report["classes"][store.class_names[c]] = {
            "patches_with_class": int(holds.sum()),
            "presence_auc": round(roc_auc(score, holds), 3),
            "top100_by_presence_with_class": int(holds[np.argsort(-score)[:100]].sum()),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
