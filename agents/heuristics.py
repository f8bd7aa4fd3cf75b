"""Heuristic policies with the SB3 interface: they score each candidate's observation row.

``random``, ``bald`` (highest patch-mean BALD), ``entropy`` (highest predictive entropy) and
``presence`` (highest predicted share of the target) read only the observation. ``oracle`` reads
the candidates' true target counts from the environment's store: an upper bound for evaluation,
not a policy over observations. ``learn`` rolls the policy out (so its curves overlay with the
learning agents' in TensorBoard) and changes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from misical_gym.agents.rollout import RolloutLearner
from misical_gym.atomic import atomic_write_text

HEURISTICS: dict[str, str | None] = {
    "random": None,
    "bald": "bald_mean",
    "entropy": "entropy_mean",
    "presence": "target_presence",
    "oracle": None,
}
"""Heuristic name -> the observation column it maximises (None: not an observation column)."""


class HeuristicPolicy(RolloutLearner):
    """Pick the valid candidate with the highest score; ties and ``random`` draw from a seeded RNG.

    Args:
        name: One of :data:`HEURISTICS`.
        env: A MiSiCAL environment (its ``candidate_shape`` and ``feature_names`` define rows).
        seed: Seed of tie-breaking (and of every pick for ``random``).
        tensorboard_log: Where :meth:`learn` writes its rollout curves (SB3 layout).
    """

    def __init__(
        self,
        name: str,
        env: gym.Env,
        seed: int | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        if name not in HEURISTICS:
            raise ValueError(f"unknown heuristic {name!r}; choose one of {', '.join(HEURISTICS)}")
        super().__init__(env, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose)
        self.name = name
        column = HEURISTICS[name]
        self.column = None if column is None else self.feature_names.index(column)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Scores ``[B, K]`` of candidate rows ``[B, K, F]`` (higher is picked first)."""
        if self.name == "random":
            return self.rng.random(rows.shape[:2])
        if self.name == "oracle":
            state = self.env.unwrapped.compact_state()
            ids, target = state[:-2], state[-2]
            counts = np.asarray(self.env.unwrapped.store.counts[np.maximum(ids, 0), target])
            return np.broadcast_to(np.where(ids >= 0, counts, -1), rows.shape[:2]).astype(float)
        return rows[..., self.column]

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path).with_suffix(".json")
        atomic_write_text(path, json.dumps({"heuristic": self.name, "seed": self.seed}))
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], env: gym.Env | None = None, **_: Any
    ) -> HeuristicPolicy:
        state = json.loads(Path(path).with_suffix(".json").read_text())
        if env is None:
            raise ValueError("a heuristic needs the environment it scores: load(path, env=env)")
        return cls(state["heuristic"], env, seed=state["seed"])
