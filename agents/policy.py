"""One policy interface: score the candidate rows, mask, argmax.

Every policy of the package (the DDQN, the SB3 adapters, the supervised ablation and the
heuristics) is a :class:`CandidatePolicy`: it scores each candidate row of an observation, and
the action is the best valid candidate (:func:`masked_argmax`). Selection, evaluation and the
learners all choose through these functions, so the rules below hold everywhere:

- a candidate slot is valid unless its row is all zeros (the envs' empty slots,
  :func:`valid_rows`), or unless an action mask says otherwise;
- an observation without any valid slot treats every slot as valid (any pick is then a no-op);
- exact ties are broken at random when a generator is given, else by slot order.

The functions work on NumPy arrays and on torch tensors alike and import no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import gymnasium as gym
import numpy as np

from misical_gym.envs.wrappers import with_statistics

# A NumPy array or a torch tensor: they share the operators used on it, but no type says so
# (hence the ignores below).
ArrayT = TypeVar("ArrayT")

TIE_BREAK_SCALE = 1e-9
"""Jitter added to scores for random tie-breaking: below float32's resolution of real scores."""


@runtime_checkable
class CandidatePolicy(Protocol):
    """Scores the K candidates of observations; the action is the best valid one."""

    @property
    def candidate_shape(self) -> tuple[int, int]:
        """``(K, F)``: candidates per observation and features per candidate."""
        ...

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Scores ``[B, K]`` of candidate rows ``[B, K, F]``; higher is picked first."""
        ...

    @property
    def tie_break_rng(self) -> np.random.Generator | None:
        """Breaks exact ties between scores at random, or None: ties go to the lowest slot."""
        ...


@runtime_checkable
class Agent(CandidatePolicy, Protocol):
    """A policy with SB3's interface: what ``misical train`` trains and saves."""

    tensorboard_log: str | None

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]: ...

    def learn(self, total_timesteps: int, *args: Any, **kwargs: Any) -> Any: ...

    def set_env(self, env: gym.Env) -> None: ...

    def save(self, path: Path) -> Path | None: ...


_ROWS_SUMMED_BY_PRODUCT = 4096
"""Entries from which :func:`valid_rows` sums NumPy rows as a product with ones: on one
observation of 32 x 26 the product and its overflow guard cost 7 us against the sum's 5; on a
replay batch of 128 of them, 39 against 112."""


def valid_rows(rows: ArrayT) -> ArrayT:
    """``[..., K]`` True where a candidate row ``[..., K, F]`` is not all zeros (an empty slot)."""
    # A sum of absolute values is positive exactly when one is non-zero (rows are finite, and a
    # sum of non-negative terms is at least its largest); on CPU torch sums about 3x faster than
    # it reduces a bool tensor with ``any``, and NumPy sums a batch's rows 3x faster as a product
    # with ones than along their short last axis (one env's few rows: the sum is cheaper).
    if isinstance(rows, np.ndarray) and rows.size > _ROWS_SUMMED_BY_PRODUCT:
        with np.errstate(over="ignore"):  # a sum past float32's range is inf: still positive
            return np.abs(rows) @ np.ones(rows.shape[-1], dtype=rows.dtype) > 0  # type: ignore[return-value]
    return abs(rows).sum(-1) > 0  # type: ignore[arg-type,return-value]


def valid_or_all(masks: ArrayT) -> ArrayT:
    """``masks`` ``[..., K]`` with rows that allow nothing opened to every slot."""
    return masks | ~masks.any(-1)[..., None]  # type: ignore[attr-defined]


def masked_argmax(
    scores: np.ndarray, masks: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The best valid slot of every row: ``[B]`` actions for scores and masks ``[B, K]``.

    Args:
        scores: Higher is better.
        masks: True where a slot may be chosen; a row without any is opened to every slot.
        rng: Breaks exact ties at random (a jitter far below the scores' resolution); without
            it ties go to the lowest slot.
    """
    valid = valid_or_all(np.asarray(masks, dtype=bool))
    masked = np.where(valid, scores, -np.inf)
    if rng is not None:
        masked = masked + rng.random(masked.shape) * TIE_BREAK_SCALE
    return np.argmax(masked, axis=-1)


def as_rows(
    observation: np.ndarray, candidate_shape: tuple[int, int], rows_observation: bool = False
) -> tuple[np.ndarray, bool]:
    """``[B, K, F]`` candidate rows of one observation or a batch, and whether it was one.

    Observations may be flat (``[K*F]``, ``[B, K*F]``) or rows (``[K, F]``, ``[B, K, F]``), and
    K may differ from ``candidate_shape``'s. A trailing axis of F features means rows, except
    for flat observations of one candidate, unless the env's observations are rows
    (``rows_observation``).

    Raises:
        ValueError: the shape holds no whole number of F-feature rows.
    """
    obs = np.asarray(observation, dtype=np.float32)
    k, f = candidate_shape
    is_rows = obs.ndim >= 2 and obs.shape[-1] == f and (k > 1 or rows_observation)
    single = obs.ndim == (2 if is_rows else 1)
    batch = obs[None] if single else obs
    if batch.ndim != (3 if is_rows else 2) or batch.shape[-1] % f:
        raise ValueError(
            f"observations must be flat or rows of {f} features, one or a batch; got shape "
            f"{obs.shape}"
        )
    return batch.reshape(batch.shape[0], -1, f), single


def greedy_actions(
    policy: CandidatePolicy,
    observation: np.ndarray,
    action_masks: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    rows_observation: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The policy's greedy action for one observation (a 0-d array) or a batch, and the scores.

    ``action_masks`` (``[K]`` or ``[B, K]``) default to the non-empty slots.
    """
    rows, single = as_rows(observation, policy.candidate_shape, rows_observation)
    scores = np.asarray(policy.scores(rows))
    actions = masked_argmax(scores, candidate_masks(rows, action_masks), rng)
    return (actions[0] if single else actions), scores


def candidate_masks(rows: np.ndarray, action_masks: np.ndarray | None) -> np.ndarray:
    """``[B, K]`` valid slots of rows ``[B, K, F]``: the given masks, else the non-empty rows."""
    if action_masks is None:
        return np.asarray(valid_rows(rows))
    return np.asarray(action_masks, dtype=bool).reshape(rows.shape[:2])


@dataclass(frozen=True)
class PlayedEpisode:
    """One greedy episode: its ``info["episode"]`` statistics and its picks in order."""

    statistics: dict[str, Any]
    patch_ids: list[int]
    scores: list[float]


def play_episode(
    policy: CandidatePolicy, env: gym.Env, seed: int | None, *, break_ties: bool = True
) -> PlayedEpisode:
    """Play one greedy episode of ``policy`` in ``env`` (a MiSiCAL env), reset with ``seed``.

    Evaluation and selection both play through here. ``break_ties=False`` sends exact ties to
    the lowest slot instead of the policy's own ``tie_break_rng``.
    """
    env = with_statistics(env)
    rng = policy.tie_break_rng if break_ties else None
    obs, info = env.reset(seed=seed)
    patch_ids: list[int] = []
    scores: list[float] = []
    while True:
        action, candidate_scores = greedy_actions(policy, obs, info["action_mask"], rng)
        obs, _, terminated, truncated, info = env.step(int(action))
        if info["patch_id"] >= 0:
            patch_ids.append(int(info["patch_id"]))
            scores.append(float(candidate_scores[0, action]))
        if terminated or truncated:
            return PlayedEpisode(info["episode"], patch_ids, scores)
