"""Heuristic policies with the SB3 interface: they score each candidate's observation row.

``random``, ``bald`` (highest patch-mean BALD), ``entropy`` (highest predictive entropy) and
``presence`` (highest predicted share of the target) read only the observation, by the columns
the env names in ``feature_names``. ``learn`` rolls the policy out (so its curves overlay with the
learning agents' in TensorBoard) and changes nothing.

``oracle`` is not a policy over observations. Observations never hold the oracle counts, so it
reads the candidates' store ids and the target from the environment it is bound to
(``env.unwrapped.compact_state()``) and picks the candidate with the most target pixels: an upper
bound for evaluation only. It therefore acts on one observation at a time, the one that
environment shows now, and refuses a batch or any other observation.
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
from misical_gym.envs.patch_selection import unwrap_misical

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
        env: A MiSiCAL environment (its ``candidate_shape`` and ``feature_names`` define rows;
            for ``oracle``, the environment whose current candidates it scores).
        seed: Seed of tie-breaking (and of every pick for ``random``).
        tensorboard_log: Where :meth:`learn` writes its rollout curves (SB3 layout).
        verbose: SB3's verbosity of :meth:`learn`'s logger.
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
        if column is not None and column not in self.feature_names:
            raise ValueError(
                f"the {name} heuristic reads the {column!r} column, which this environment's "
                "features= leaves out of its observation"
            )
        self.column = None if column is None else self.feature_names.index(column)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Scores ``[B, K]`` of candidate rows ``[B, K, F]`` (higher is picked first)."""
        if self.name == "random":
            return self.rng.random(rows.shape[:2])
        if self.name == "oracle":
            return self._oracle_scores(rows)
        return rows[..., self.column]

    def _oracle_scores(self, rows: np.ndarray) -> np.ndarray:
        """True target pixels of the env's current candidates (-1 for empty slots)."""
        assert self.env is not None
        env = unwrap_misical(self.env)
        state = env.compact_state()
        shown = env.observation_from_compact(state).reshape(self.candidate_shape)
        if rows.shape[0] != 1 or not np.array_equal(rows[0], shown):
            raise ValueError(
                "the oracle reads the true counts of the candidates its environment shows now: "
                "give it that environment's current observation, one at a time"
            )
        ids, target = state[:-2], state[-2]
        counts = np.asarray(env.store.counts[np.maximum(ids, 0), target])
        return np.where(ids >= 0, counts, -1)[None].astype(float)

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
