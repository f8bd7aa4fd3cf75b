"""A native batched MiSiCAL environment: N episodes stepped in NumPy at once."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from misical_gym.envs.core import (
    ObservationBuilder,
    RewardFunction,
    check_reset_options,
)
from misical_gym.envs.patch_selection import MiSiCALEnv


class MiSiCALVectorEnv(VectorEnv):
    """``num_envs`` MiSiCAL episodes stepped together, without a Python loop over envs.

    Made by ``gym.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``. The
    semantics are :class:`~misical_gym.envs.MiSiCALEnv`'s, batched: the same arguments, the same
    observation columns and rewards. Autoreset follows Gymnasium 1.x's default ``NEXT_STEP``
    mode: the step after a sub-environment terminates resets it, ignores its action and returns
    its first observation with reward 0.

    Candidates are drawn for all episodes at once by rejection sampling over each episode's
    remaining patches, so a step costs a fixed number of NumPy calls whatever N; the episodes
    whose draws keep repeating (small pools) fall back to a partial Fisher–Yates shuffle, one
    vectorised swap per candidate slot.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "render_modes": [],
    }

    def __init__(self, num_envs: int = 1, **env_kwargs: Any) -> None:
        """Create ``num_envs`` episodes; ``env_kwargs`` are :class:`MiSiCALEnv`'s arguments."""
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if env_kwargs.get("render_mode") is not None:
            raise ValueError("the vector environment does not render; use MiSiCALEnv")
        # One single env validates the arguments and defines the spaces: one source of truth.
        self._template = MiSiCALEnv(**env_kwargs)
        t = self._template
        self.store = t.store
        self.num_envs = num_envs
        self.budget, self.pool_size, self.flatten = t.budget, t.pool_size, t.flatten
        self.candidate_shape = t.candidate_shape
        self.feature_names = t.feature_names
        self.split_ids = t.split_ids
        self.fixed_target = t.fixed_target
        self.random_targets = t.random_targets
        self.builder: ObservationBuilder = t.builder
        self.reward_fn: RewardFunction = t.reward_fn
        self.single_observation_space = t.observation_space
        self.single_action_space = t.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = spaces.MultiDiscrete(np.full(num_envs, self.pool_size))
        self._areas = self.store.areas
        self._counts = self.store.counts
        n, p, k = num_envs, self.split_ids.size, self.pool_size
        self._rows = np.arange(n)
        self._remaining = np.empty((n, p), dtype=np.int64)
        self._num_remaining = np.zeros(n, dtype=np.int64)
        self._candidates = np.full((n, k), -1, dtype=np.int64)
        self._positions = np.full((n, k), -1, dtype=np.int64)  # of the candidates in _remaining
        self._budget_left = np.zeros(n, dtype=np.int64)
        self._target = np.zeros(n, dtype=np.int64)
        self._autoreset = np.zeros(n, dtype=bool)

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-environment (``options["reset_mask"]`` resets only those marked)."""
        options = check_reset_options(options, ("reset_mask",))
        super().reset(seed=seed if isinstance(seed, int) or seed is None else seed[0])
        mask = np.asarray(options.get("reset_mask", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        # Removal swaps patches, so every row stays a permutation of the split and an autoreset
        # needs no copy; an explicit reset restores the canonical order so seeds reproduce.
        self._remaining[mask] = self.split_ids
        self._reset_envs(mask)
        self._autoreset[mask] = False
        nothing = np.zeros(self.num_envs, dtype=np.int64)
        return self._observations(), self._infos(nothing - 1, nothing, nothing.astype(bool))

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"actions must be {self.num_envs} integers, got {actions!r}")
        if ((actions < 0) | (actions >= self.pool_size)).any():
            raise ValueError(f"actions {actions} are outside Discrete({self.pool_size})")
        rows, resetting = self._rows, self._autoreset
        chosen = self._candidates[rows, actions]
        acting = ~resetting
        picked = acting & (chosen >= 0)
        patch_ids = np.where(picked, chosen, -1)
        pixels = np.where(picked, self._counts[np.maximum(chosen, 0), self._target], 0)
        rewards = np.where(picked, self.reward_fn(pixels, self._areas[np.maximum(chosen, 0)]), 0.0)
        # The chosen patch leaves its episode's pool: swap it with the last remaining one.
        last = self._num_remaining - picked
        r = rows[picked]
        pos = self._positions[r, actions[picked]]
        moved = self._remaining[r, last[picked]]
        self._remaining[r, last[picked]] = self._remaining[r, pos]
        self._remaining[r, pos] = moved
        self._num_remaining = last
        self._budget_left -= acting
        terminated = acting & (self._budget_left == 0)
        if resetting.any():
            self._reset_envs(resetting)
        self._draw_candidates(acting)
        infos = self._infos(patch_ids, pixels, acting & (chosen < 0))
        self._autoreset = terminated
        return (
            self._observations(),
            rewards.astype(np.float64),
            terminated,
            np.zeros(self.num_envs, dtype=bool),
            infos,
        )

    def action_masks(self) -> np.ndarray:
        """Boolean ``[num_envs, pool_size]`` mask of the slots that hold a patch."""
        return self._candidates >= 0

    def compact_state(self) -> np.ndarray:
        """int64 ``[num_envs, pool_size + 2]``: candidate ids, target, budget left."""
        return np.concatenate(
            [self._candidates, self._target[:, None], self._budget_left[:, None]], axis=1
        )

    def observation_from_compact(self, compact: np.ndarray) -> np.ndarray:
        """Rebuild observations from compact states, like the single environment."""
        return self._template.observation_from_compact(compact)

    # ------------------------------------------------------------------ internals
    def _reset_envs(self, mask: np.ndarray) -> None:
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        if self.fixed_target is None:
            self._target[idx] = self.np_random.choice(self.random_targets, size=idx.size)
        else:
            self._target[idx] = self.fixed_target
        self._num_remaining[idx] = self.split_ids.size
        self._budget_left[idx] = self.budget
        self._draw_candidates(mask)

    def _draw_candidates(self, mask: np.ndarray) -> None:
        """Draw K distinct positions per episode among its remaining patches.

        Draws with replacement and keeps the rows without a repeat (rejection sampling, exact and
        nearly always accepted on large pools); rows that keep repeating, as on small pools,
        fall back to a partial Fisher–Yates shuffle, one vectorised swap per slot.
        """
        rows = np.flatnonzero(mask)
        idx, k = rows, self.pool_size
        for _ in range(3):
            n_rem = self._num_remaining[idx]
            # Truncation is floor here: both factors are non-negative.
            positions = (self.np_random.random((idx.size, k)) * n_rem[:, None]).astype(np.int64)
            ordered = np.sort(positions, axis=1)
            ok = (ordered[:, 1:] != ordered[:, :-1]).all(axis=1) & (n_rem >= k)
            if ok.all():
                self._positions[idx] = positions
                idx = idx[:0]
                break
            self._positions[idx[ok]] = positions[ok]
            idx = idx[~ok]
        if idx.size:
            self._fisher_yates(idx)
        slots = self._positions[rows]
        ids = self._remaining[rows[:, None], np.maximum(slots, 0)]
        self._candidates[rows] = np.where(slots >= 0, ids, -1)

    def _fisher_yates(self, idx: np.ndarray) -> None:
        """Partial Fisher–Yates: slot j swaps in a uniform pick from positions j..remaining-1."""
        n_rem = self._num_remaining[idx]
        uniforms = self.np_random.random((idx.size, self.pool_size))
        remaining = self._remaining
        for j in range(self.pool_size):
            live = j < n_rem
            rows = idx[live]
            swap = j + np.floor(uniforms[live, j] * (n_rem[live] - j)).astype(np.int64)
            held = remaining[rows, j]
            remaining[rows, j] = remaining[rows, swap]
            remaining[rows, swap] = held
        slots = np.arange(self.pool_size)
        self._positions[idx] = np.where(slots[None, :] < n_rem[:, None], slots[None, :], -1)

    def _observations(self) -> np.ndarray:
        return self._template.build_observation(
            self._candidates, self._target, self._budget_left / self.budget
        )

    def _infos(
        self, patch_ids: np.ndarray, pixels: np.ndarray, masked: np.ndarray
    ) -> dict[str, Any]:
        infos = {
            "action_mask": (self._candidates >= 0).astype(np.int8),
            "candidate_ids": self._candidates.copy(),
            "target_class": self._target.copy(),
            "patch_id": patch_ids,
            "target_pixels": pixels,
            "masked_action": masked,
            "budget_left": self._budget_left.copy(),
        }
        # Gymnasium's vector info convention: "_key" marks the sub-envs that carry "key".
        everywhere = np.ones(self.num_envs, dtype=bool)
        return {**infos, **{f"_{key}": everywhere for key in infos}}
