"""The evaluation's statistics: per policy, the classes where it beats random."""

from __future__ import annotations

from typing import Any

import numpy as np

SIGNIFICANCE = 0.05
"""Level of the one-sided Mann–Whitney U test behind ``beats_random_significant``."""


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
