"""How far past presence-greedy a scorer of the same observation rows gets, per rare class.

Presence-greedy picks the candidate whose ``target_presence`` (the frozen segmenter's mean
predicted probability of the target over the patch) is highest. Every learned policy sees that
column and the rest of the row, so the question behind "why does the DDQN not beat it" is how
much the rest of the row adds. This script answers it with a transparent scorer: a ridge
regression of the patch's target pixel count on the row's columns, their squares and their
products with ``target_presence``, with the ridge penalty chosen by 5-fold cross-validation.

For each class it plays the evaluation's protocol (``misical evaluate``'s greedy episodes over
the pool: ``--pool-size`` candidates a pick, ``--budget`` picks, seeds 0..``--seeds``-1) with:

- ``presence``: presence-greedy, as in the evaluation;
- ``ridge_init``: the regression fitted on init (labels known), as a learned policy trains;
- ``ridge_pool``: the regression fitted on the pool's own counts, then played on that pool.
  It has seen the answers, so it is an optimistic reference for what the rows can say about
  the target in this form, not a policy;
- ``oracle``: the candidate with the most target pixels, the ceiling of the protocol.

Prints one JSON object: per class and scorer, the target pixels per seed and their mean, and
each scorer's mean against presence's. With ``--sweep POINTS_JSON`` (a ``misical sweep``
``points.json`` over the same store, classes and seeds), each sweep point's per-seed pixels are
set against presence-greedy's too: the mean against presence's, the seeds where the point is
ahead, and one-sided p-values for "ahead" and "behind": Mann–Whitney U, and the Wilcoxon
signed-rank test of the seeds as matched pairs (a seed draws the same candidates for both).

Usage: ``python benchmarks/presence_headroom.py [--store DIR] [--classes a,b] [--seeds 3]
[--sweep POINTS_JSON]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RIDGE_PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Ridge penalties tried by cross-validation, on standardised columns."""

CV_FOLDS = 5


def expand(rows: np.ndarray, presence_column: int) -> np.ndarray:
    """Columns, their squares and their products with the target's presence (``[..., 3F]``)."""
    presence = rows[..., presence_column : presence_column + 1]
    return np.concatenate([rows, rows * rows, rows * presence], axis=-1)


class RidgeScorer:
    """Scores rows by a ridge regression of target pixels on :func:`expand`'s columns."""

    def __init__(self, candidate_shape: tuple[int, int], kept: np.ndarray, presence_column: int):
        self._candidate_shape = candidate_shape
        self.kept = kept  # the row's columns the regression reads (budget_left is left out)
        self.presence_column = presence_column
        self.mean = np.zeros(0)
        self.scale = np.ones(0)
        self.weights = np.zeros(0)
        self.penalty = float("nan")

    @property
    def candidate_shape(self) -> tuple[int, int]:
        return self._candidate_shape

    @property
    def tie_break_rng(self) -> None:
        return None

    def _design(self, rows: np.ndarray) -> np.ndarray:
        x = expand(rows[..., self.kept].astype(np.float64), self.presence_column)
        return (x - self.mean) / self.scale

    def fit(self, rows: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> RidgeScorer:
        x = expand(rows[:, self.kept].astype(np.float64), self.presence_column)
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-12
        x = (x - self.mean) / self.scale
        y = counts.astype(np.float64)
        folds = rng.permutation(len(y)) % CV_FOLDS
        errors = []
        for penalty in RIDGE_PENALTIES:
            error = 0.0
            for fold in range(CV_FOLDS):
                train, held = folds != fold, folds == fold
                w = _ridge(x[train], y[train], penalty)
                error += float(((x[held] @ w[1:] + w[0] - y[held]) ** 2).sum())
            errors.append(error)
        self.penalty = RIDGE_PENALTIES[int(np.argmin(errors))]
        self.weights = _ridge(x, y, self.penalty)
        return self

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return self._design(rows) @ self.weights[1:] + self.weights[0]


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Intercept then weights of ``min |y - b - xw|^2 + penalty * n * |w|^2``."""
    offset = y.mean()
    gram = x.T @ x + penalty * len(y) * np.eye(x.shape[1])
    w = np.linalg.solve(gram, x.T @ (y - offset))
    return np.concatenate([[offset - x.mean(0) @ w], w])


def read_sweep_points(path: Path, seeds: int) -> list[dict]:
    """A ``misical sweep`` ``points.json``, checked: each point's name, target and per-seed
    target pixels, ``seeds`` of them (the headroom's seeds, compared seed by seed)."""
    try:
        points = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"--sweep {path}: not a readable JSON file ({error})") from None
    if not isinstance(points, list):
        raise SystemExit(f"--sweep {path}: expected a sweep's points.json, a list of points")
    for point in points:
        pixels = point.get("seed_target_pixels") if isinstance(point, dict) else None
        if not (
            isinstance(point, dict)
            and isinstance(point.get("point"), str)
            and isinstance(point.get("target"), str)
            and isinstance(pixels, list)
            and all(isinstance(p, int) and not isinstance(p, bool) for p in pixels)
        ):
            raise SystemExit(
                f"--sweep {path}: every point needs 'point', 'target' and 'seed_target_pixels'"
            )
        if len(pixels) != seeds:
            raise SystemExit(
                f"--sweep {path}: point {point['point']!r} on {point['target']} has "
                f"{len(pixels)} seeds, this run {seeds}: run both with the same --seeds"
            )
    return points


def against_presence(pixels: list[int], presence: list[int]) -> dict:
    """A sweep point's per-seed pixels set against presence-greedy's, seed by seed.

    Besides the two-sample test, a paired one: a seed fixes the random draws of candidates, so
    two policies see the same candidates until their picks differ, and a seed's two results
    are a matched pair whose difference varies far less than either result across seeds.
    """
    from scipy.stats import mannwhitneyu, wilcoxon

    mine, theirs = np.array(pixels), np.array(presence)

    def paired(alternative: str) -> float:
        if not (mine != theirs).any():
            return 1.0
        return round(float(wilcoxon(mine, theirs, alternative=alternative).pvalue), 3)

    return {
        "target_pixels": pixels,
        "mean": round(float(mine.mean()), 1),
        "vs_presence": round(float(mine.mean() / theirs.mean()), 3),
        "seeds_ahead": int((mine > theirs).sum()),
        "p_ahead": round(float(mannwhitneyu(mine, theirs, alternative="greater").pvalue), 3),
        "p_behind": round(float(mannwhitneyu(mine, theirs, alternative="less").pvalue), 3),
        "p_ahead_paired": paired("greater"),
        "p_behind_paired": paired("less"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a prepared store (default: the synthetic one)")
    parser.add_argument("--classes", help="comma-separated names (default: the rare classes)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=32)
    parser.add_argument(
        "--sweep", type=Path, help="a misical sweep's points.json to set against presence-greedy"
    )
    args = parser.parse_args()
    sweep = read_sweep_points(args.sweep, args.seeds) if args.sweep else []

    from misical_gym.envs.core import ObservationBuilder
    from misical_gym.paths import default_store_path
    from misical_gym.store import FeatureStore
    from misical_gym.train.select import select_patches

    path = args.store or default_store_path("synthetic")
    store = FeatureStore.open(path)
    if args.classes:
        classes = [store.class_index(name) for name in args.classes.split(",")]
    else:
        classes = list(store.rare_classes)
    if not classes:
        raise SystemExit("this store has no designed rare classes: pass --classes")
    builder = ObservationBuilder(store, target_onehot=False)
    names = list(builder.names)
    kept = np.array([i for i, name in enumerate(names) if name != "budget_left"])
    presence_column = [names[i] for i in kept].index("target_presence")
    shape = (args.pool_size, len(names))
    split_ids = {split: store.split_ids(split) for split in ("init", "pool")}
    report: dict = {
        "store": store.path.name,
        "budget": args.budget,
        "pool_size": args.pool_size,
        "seeds": args.seeds,
        "classes": {},
    }
    for c in classes:
        scorers: dict[str, object] = {"presence": "presence"}
        for split, ids in split_ids.items():
            rows = builder.build(ids, c, 1.0, may_have_empty=False)
            counts = np.asarray(store.counts[ids, c])
            rng = np.random.default_rng(0)
            scorers[f"ridge_{split}"] = RidgeScorer(shape, kept, presence_column).fit(
                rows, counts, rng
            )
        scorers["oracle"] = "oracle"
        result: dict = {}
        for name, scorer in scorers.items():
            pixels = []
            for seed in range(args.seeds):
                picks = select_patches(
                    path, scorer, c, args.budget, pool_size=args.pool_size, seed=seed
                )["picks"]
                ids = np.array([p["patch_id"] for p in picks], dtype=np.int64)
                pixels.append(int(np.asarray(store.counts[ids, c]).sum()))
            result[name] = {"target_pixels": pixels, "mean": round(float(np.mean(pixels)), 1)}
            if isinstance(scorer, RidgeScorer):
                result[name]["ridge_penalty"] = scorer.penalty
        presence = result["presence"]["mean"]
        for name in scorers:
            result[name]["vs_presence"] = round(result[name]["mean"] / presence, 3)
        name = store.class_names[c]
        points = [p for p in sweep if p["target"] == name]
        if points:
            pixels = result["presence"]["target_pixels"]
            result["sweep"] = {
                p["point"]: against_presence(p["seed_target_pixels"], pixels) for p in points
            }
        report["classes"][name] = result
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
