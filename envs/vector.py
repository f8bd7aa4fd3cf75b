"""A native batched MiSiCAL environment: N episodes stepped in NumPy at once."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from misical_gym.envs.core import (
    ObservationBuilder,
    RewardFunction,
    check_reset_options,
)
from misical_gym.envs.patch_selection import MiSiCALEnv, describe_episode, outline_patch


class MiSiCALVectorEnv(VectorEnv):
    """``num_envs`` MiSiCAL episodes stepped together, without a Python loop over the work.

    Made by ``gym.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``. The
    semantics are :class:`~misical_gym.envs.MiSiCALEnv`'s, batched: the same arguments, the same
    observation columns, rewards and episode ends. Autoreset follows Gymnasium 1.x's default
    ``NEXT_STEP`` mode: the step after a sub-environment terminates or truncates resets it,
    ignores its action and returns its first observation with reward 0.

    Each sub-environment has its own random generator, seeded like ``SyncVectorEnv``'s:
    ``reset(seed=s)`` gives env ``i`` the seed ``s + i``, ``reset(seed=[s0, s1, ...])`` one seed
    each, and ``None`` keeps the generators (or seeds them from entropy on first use). Each
    generator makes the single environment's draws in the same order, so with the same seeds
    every sub-environment's episodes equal ``SyncVectorEnv``'s of :class:`MiSiCALEnv`, env by
    env. Only those draws loop over the envs; the candidates' rows, rewards and removals are
    one NumPy call for the batch.

    The action space is ``MultiDiscrete``: ``action_space.sample(mask=tuple(info["action_mask"]))``
    samples valid slots (Gymnasium takes one mask per env, as a tuple).

    ``max_episode_steps`` (which ``make_vec`` passes on) truncates an episode after that many
    steps, as Gymnasium's ``TimeLimit`` does for a single env; ``render_mode`` (``"ansi"`` or
    ``"rgb_array"``) makes :meth:`render` return one frame per sub-environment.
    """

    # As MiSiCALEnv's: a class attribute that Gymnasium annotates as an instance one.
    metadata: ClassVar[dict[str, Any]] = {  # type: ignore[misc]
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "render_modes": MiSiCALEnv.metadata["render_modes"],
        "render_fps": MiSiCALEnv.metadata["render_fps"],
    }

    def __init__(
        self,
        num_envs: int = 1,
        *,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        **env_kwargs: Any,
    ) -> None:
        """Create ``num_envs`` episodes; ``env_kwargs`` are :class:`MiSiCALEnv`'s arguments.

        Args:
            num_envs: The number of sub-environments.
            max_episode_steps: Truncate an episode after this many steps (None: never).
            render_mode: ``"ansi"``, ``"rgb_array"`` or None, as for :class:`MiSiCALEnv`.
            **env_kwargs: :class:`MiSiCALEnv`'s arguments, shared by every sub-environment.
        """
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if max_episode_steps is not None and (
            isinstance(max_episode_steps, bool)
            or not isinstance(max_episode_steps, int)
            or max_episode_steps < 1
        ):
            raise ValueError(
                f"max_episode_steps must be a positive integer or None, got {max_episode_steps!r}"
            )
        # One single env validates the arguments and defines the spaces: one source of truth.
        self._template = MiSiCALEnv(render_mode=render_mode, **env_kwargs)
        t = self._template
        self.store = t.store
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.split = t.split
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
        n, k = num_envs, self.pool_size
        self._rows = np.arange(n)
        # Seeded from entropy until a reset seeds them, as Env.np_random is.
        self._rngs = [seeding.np_random()[0] for _ in range(n)]
        self._uniforms = np.empty((n, k))  # one row per env: its generator's draws
        # Every row stays a permutation of the split: removal swaps the chosen patch with the
        # last remaining one, and a reset puts back the positions it touched (logged in
        # _touched, two per pick, 0 where unused: position 0 put back is harmless), which
        # restores the split's order, as the single env's reset does, without copying the split.
        self._remaining = np.tile(self.split_ids, (n, 1))
        self._touched = np.zeros((n, 2 * self.budget), dtype=np.int64)
        self._num_remaining = np.zeros(n, dtype=np.int64)
        self._candidates = np.full((n, k), -1, dtype=np.int64)
        self._positions = np.full((n, k), -1, dtype=np.int64)  # of the candidates in _remaining
        self._budget_left = np.zeros(n, dtype=np.int64)
        self._elapsed = np.zeros(n, dtype=np.int64)
        self._target = np.zeros(n, dtype=np.int64)
        self._target_pixels_total = np.zeros(n, dtype=np.int64)
        self._last_patch = np.full(n, -1, dtype=np.int64)
        self._autoreset = np.zeros(n, dtype=bool)

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-environment (``options["reset_mask"]`` resets only those marked).

        Args:
            seed: None (keep the generators), an int ``s`` (env ``i`` gets ``s + i``) or one
                seed (or None) per sub-environment, as for ``SyncVectorEnv``.
            options: ``reset_mask``: a bool array of the sub-environments to reset.

        Returns:
            The batched observations and infos.
        """
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, int | np.integer):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(
                    f"reset(seed=...) takes one seed per sub-environment ({self.num_envs}), "
                    f"got {len(seeds)}"
                )
        checked = check_reset_options(options, ("reset_mask",))
        mask = np.asarray(checked.get("reset_mask", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        for e in np.flatnonzero(mask).tolist():
            if seeds[e] is not None:
                self._rngs[e] = seeding.np_random(seeds[e])[0]
        self._reset_envs(mask)
        self._autoreset[mask] = False
        nothing = np.zeros(self.num_envs, dtype=np.int64)
        never = nothing.astype(bool)
        return self._observations(), self._infos(nothing - 1, nothing, never, never)

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
        r, lp = rows[picked], last[picked]
        pos = self._positions[r, actions[picked]]
        moved = self._remaining[r, lp]
        self._remaining[r, lp] = self._remaining[r, pos]
        self._remaining[r, pos] = moved
        pick = 2 * (self.split_ids.size - 1 - lp)  # this episode's pick number, times two
        self._touched[r, pick] = pos
        self._touched[r, pick + 1] = lp
        self._num_remaining = last
        self._budget_left -= acting
        self._elapsed += acting
        self._target_pixels_total += pixels
        self._last_patch[acting] = patch_ids[acting]
        terminated = acting & (self._budget_left == 0)
        # As the single env: no patch left with budget to spend truncates (see its Episode End).
        out_of_patches = acting & ~terminated & (self._num_remaining == 0)
        truncated = out_of_patches.copy()
        if self.max_episode_steps is not None:
            truncated |= acting & (self._elapsed >= self.max_episode_steps)
        if resetting.any():
            self._reset_envs(resetting)
        self._draw_candidates(acting)
        infos = self._infos(patch_ids, pixels, acting & (chosen < 0), out_of_patches)
        self._autoreset = terminated | truncated
        return self._observations(), rewards.astype(np.float64), terminated, truncated, infos

    def render(self) -> tuple[str | np.ndarray, ...] | None:
        """One frame per sub-environment, as :meth:`MiSiCALEnv.render` (None without a mode)."""
        if self.render_mode == "ansi":
            return tuple(
                describe_episode(
                    self.store,
                    self.split,
                    target=int(self._target[e]),
                    budget_left=int(self._budget_left[e]),
                    budget=self.budget,
                    target_pixels=int(self._target_pixels_total[e]),
                    last_patch=int(self._last_patch[e]),
                    live_candidates=int((self._candidates[e] >= 0).sum()),
                    pool_size=self.pool_size,
                    remaining=int(self._num_remaining[e]),
                )
                for e in range(self.num_envs)
            )
        if self.render_mode == "rgb_array":
            last, first = self._last_patch, self._candidates[:, 0]
            return tuple(
                outline_patch(self.store, int(patch)) for patch in np.where(last >= 0, last, first)
            )
        return None

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

    def candidate_rewards(
        self,
        compact: np.ndarray,
        target: np.ndarray | int | None = None,
        *,
        shown: bool = False,
    ) -> np.ndarray:
        """Every candidate's reward in compact states, like the single environment's."""
        return self._template.candidate_rewards(compact, target, shown=shown)

    @property
    def goal_targets(self) -> np.ndarray:
        """The classes an episode's target is drawn from, like the single environment's."""
        return self._template.goal_targets

    # ------------------------------------------------------------------ internals
    def _reset_envs(self, mask: np.ndarray) -> None:
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        touched = self._touched[idx]
        self._remaining[idx[:, None], touched] = self.split_ids[touched]
        self._touched[idx] = 0
        if self.fixed_target is None:
            # Each env's own generator, in the single env's order: target first, then candidates.
            self._target[idx] = [self._rngs[e].choice(self.random_targets) for e in idx.tolist()]
        else:
            self._target[idx] = self.fixed_target
        self._num_remaining[idx] = self.split_ids.size
        self._budget_left[idx] = self.budget
        self._elapsed[idx] = 0
        self._target_pixels_total[idx] = 0
        self._last_patch[idx] = -1
        self._draw_candidates(mask)

    def _draw_candidates(self, mask: np.ndarray) -> None:
        """Draw K distinct positions per episode among its remaining patches.

        The single env's draw (:meth:`MiSiCALEnv._distinct_positions`), env by env with each
        env's generator: K uniforms with replacement, kept when none repeats (checked for the
        batch at once), at most three times, else ``Generator.choice``, which small pools
        (fewer patches left than K) use directly.
        """
        rows = np.flatnonzero(mask)
        k = self.pool_size
        pending = rows[self._num_remaining[rows] >= k]
        for _ in range(3):
            if pending.size == 0:
                break
            uniforms = self._uniforms[: pending.size]
            # The only loop over envs: one generator call each (into a preallocated row).
            for i, e in enumerate(pending.tolist()):
                self._rngs[e].random(out=uniforms[i])
            # Truncation is floor here: both factors are non-negative.
            positions = (uniforms * self._num_remaining[pending, None]).astype(np.int64)
            ordered = np.sort(positions, axis=1)
            ok = (ordered[:, 1:] != ordered[:, :-1]).all(axis=1)
            self._positions[pending[ok]] = positions[ok]
            pending = pending[~ok]
        for e in [*pending.tolist(), *rows[self._num_remaining[rows] < k].tolist()]:
            n = int(self._num_remaining[e])
            drawn = self._rngs[e].choice(n, size=min(k, n), replace=False)
            self._positions[e, : drawn.size] = drawn
            self._positions[e, drawn.size :] = -1
        slots = self._positions[rows]
        ids = self._remaining[rows[:, None], np.maximum(slots, 0)]
        self._candidates[rows] = np.where(slots >= 0, ids, -1)

    def _observations(self) -> np.ndarray:
        return self._template.build_observation(
            self._candidates, self._target, self._budget_left / self.budget
        )

    def _infos(
        self,
        patch_ids: np.ndarray,
        pixels: np.ndarray,
        masked: np.ndarray,
        out_of_patches: np.ndarray,
    ) -> dict[str, Any]:
        infos = {
            "action_mask": (self._candidates >= 0).astype(np.int8),
            "candidate_ids": self._candidates.copy(),
            "target_class": self._target.copy(),
            "patch_id": patch_ids,
            "target_pixels": pixels,
            "masked_action": masked,
            "budget_left": self._budget_left.copy(),
            "out_of_patches": out_of_patches,
        }
        # Gymnasium's vector info convention: "_key" marks the sub-envs that carry "key".
        everywhere = np.ones(self.num_envs, dtype=bool)
        return {**infos, **{f"_{key}": everywhere for key in infos}}
