"""The MiSiCAL patch-selection environment."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from misical_gym.envs.core import (
    DEFAULT_REWARD_BINS,
    DEFAULT_REWARD_VALUES,
    ObservationBuilder,
    RewardFunction,
    check_reset_options,
    kept_table,
    resolve_store,
    resolve_target,
    revealed_when_shown,
    targets_present,
)
from misical_gym.store import FeatureStore

_REWARD_TABLES_KEPT = 8
"""Per-target reward tables an env keeps (:meth:`MiSiCALEnv._reward_table`): a fixed target
needs one; a COCO-sized store's table is 1.3 MB."""

SELECTION_SPLITS: tuple[str, ...] = ("init", "pool")


class MiSiCALEnv(gym.Env[np.ndarray, np.int64]):
    """Pick image patches to annotate so that one target class gains as many pixels as possible.

    ## Description

    MiSiCAL ("Mining of Single-Class by Active Learning") casts class-targeted active learning for
    semantic segmentation as a sequential decision problem. A segmentation model was trained once
    on a small labelled set and frozen; with MC dropout it gave every image patch fixed features
    (BALD uncertainty, predictive entropy and the predicted presence of every class), kept in a
    memory-mapped feature store. Each step shows ``pool_size`` candidate patches; the agent picks
    one to send for annotation and is rewarded by how much of the *target class* it holds. The
    segmenter is never retrained between picks, so an episode costs only NumPy.

    ## Action Space

    ``Discrete(pool_size)``: the index of the candidate to annotate. When fewer than ``pool_size``
    patches remain, the empty slots are masked: ``info["action_mask"]`` is int8, as Gymnasium's
    ``Discrete.sample(mask=)`` takes, and :meth:`action_masks` the same mask as bool, for
    indexing (``q[~mask]`` on the int8 one indexes instead of masking), MaskablePPO and TorchRL.
    Picking a masked slot is a no-op worth 0 that still spends a unit of budget, and ``info``
    says so.

    ## Observation Space

    ``Box(0, high, (pool_size * F,), float32)`` (or ``(pool_size, F)`` with ``flatten=False``):
    one row of F features per candidate, ``candidate_shape == (pool_size, F)``. The columns
    (``feature_names``) are ``bald_mean``, ``bald_max``, ``entropy_mean`` (then the extra
    uncertainty columns of a store prepared with ``--uncertainty``), ``presence:<class>`` for
    every class, ``target_presence``, ``target_class_bald`` and ``budget_left`` (the fraction of
    the budget still to spend), plus a one-hot ``target:<class>`` block when ``target_onehot``.
    ``features`` keeps fewer of the columns before ``budget_left``, for ablations; F, the
    bounds and ``feature_names`` follow. Empty slots are all zeros. Oracle counts never appear.

    ## Rewards

    From the chosen patch's oracle pixel count of the target (see
    :class:`~misical_gym.envs.core.RewardFunction`): ``categorical`` by default (absent 0,
    present 0.5, substantial 1: share above 5% of the patch), or ``binary``, ``share``
    (continuous pixel share) or ``log_count`` (``log1p`` of the pixel count).

    ## Starting State

    The episode's pool is every labelled patch of ``split``; ``pool_size`` candidates are drawn
    from it uniformly without replacement. Unlabelled patches (images added without labels,
    whose oracle counts are unknown) are never drawn, so no reward is ever paid for an unknown
    count; they are for ``misical select --mode rank`` and ``misical label``. A split with no
    labelled patch is refused. With ``target_class="random"`` a target is drawn uniformly
    from the classes that occur in the split.

    ## Episode End

    ``terminated`` once ``budget`` patches have been picked: the budget is part of the task.
    ``truncated`` when the split runs out of patches before the budget is spent (a ``budget``
    above the split's patch count): the data ran out, the task did not end, so a learner should
    bootstrap from the last observation. ``info["out_of_patches"]`` is True on that step, and
    its observation has every slot empty and masked. Otherwise the environment never truncates
    on its own (``gym.make(..., max_episode_steps=N)`` adds Gymnasium's time limit).

    ## Arguments

    ```python
    import gymnasium as gym
    import misical_gym

    env = gym.make("MiSiCAL-Synthetic", target_class="skis", budget=32, pool_size=32)
    ```

    * ``root``: path of a prepared store; by default the id's own store under ``$MISICAL_HOME``
      (else ``~/.cache/misical``). ``MiSiCAL-Synthetic`` prepares its store on first use.
    * ``target_class``: a class name or index, ``"random"`` (a new target every episode) or
      ``"default"`` (the store's first designed rare class, else ``skis``).
    * ``budget``: patches picked per episode (default 32).
    * ``pool_size``: candidates shown per step, K (default 32).
    * ``split``: ``"init"`` (labels known: pretraining) or ``"pool"`` (deployment); only its
      labelled patches are drawn.
    * ``reward``, ``reward_bins``, ``reward_values``: the reward scheme and its categorical bins.
    * ``flatten``: flat observations (default True) for SB3's MLP policies.
    * ``target_onehot``: append a one-hot of the target to each row; defaults to True exactly
      when ``target_class="random"``.
    * ``features``: the patch columns to observe: ``"all"`` (default), ``"presence"`` (every
      class's presence and ``target_presence``), ``"uncertainty"`` (the uncertainty columns and
      ``target_class_bald``), ``"target_only"`` (``target_presence`` and
      ``target_class_bald``), or a list of column names; ``budget_left`` and the one-hot are
      always kept (see :meth:`~misical_gym.layout.FeatureLayout.select`).
    * ``render_mode``: ``"ansi"`` (a text summary of the episode) or ``"rgb_array"`` (the last
      chosen patch outlined in its image; needs a store that can reach its images, as every
      prepared store can).

    ## Version History

    * v0: initial release (ids are unversioned: ``MiSiCAL-COCO10k``, ``MiSiCAL-Synthetic``,
      ``MiSiCAL-Store``).
    """

    # Gymnasium annotates ``metadata`` as an instance attribute; it is a class one, as in
    # Gymnasium's own envs (and ruff's RUF012 asks for ClassVar).
    metadata: ClassVar[dict[str, Any]] = {  # type: ignore[misc]
        "render_modes": ["ansi", "rgb_array"],
        "render_fps": 4,
    }

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        store_name: str | None = None,
        target_class: str | int = "default",
        budget: int = 32,
        pool_size: int = 32,
        split: str = "init",
        reward: str = "categorical",
        reward_bins: Sequence[float] = DEFAULT_REWARD_BINS,
        reward_values: Sequence[float] = DEFAULT_REWARD_VALUES,
        flatten: bool = True,
        target_onehot: bool | None = None,
        render_mode: str | None = None,
        features: str | Sequence[str] = "all",
    ) -> None:
        _check_positive_int("budget", budget)
        _check_positive_int("pool_size", pool_size)
        if split not in SELECTION_SPLITS:
            raise ValueError(
                f"split must be one of {', '.join(SELECTION_SPLITS)} (test patches are for "
                f"measuring the segmenter, not for selection), got {split!r}"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, "
                f"got {render_mode!r}"
            )
        self.store: FeatureStore = resolve_store(root, store_name)
        if render_mode == "rgb_array" and not self.store.can_reach_images:
            raise ValueError(
                f"render_mode='rgb_array' needs the store's images, and {self.store.path} does "
                "not record where they are; use render_mode='ansi'"
            )
        self.split = split
        # Only patches whose counts are known: an unknown count must never pay a reward.
        self.split_ids = self.store.split_ids(split, labelled=True)
        if self.split_ids.size == 0:
            unlabelled = self.store.split_ids(split, labelled=False).size
            if unlabelled:
                raise ValueError(
                    f"split {split!r} of {self.store.path} holds no labelled patch (its "
                    f"{unlabelled} patches have unknown counts): an environment draws only "
                    "labelled patches, since it pays rewards from their counts. Label some with "
                    "`misical label`, or rank the pool with `misical select --mode rank`."
                )
            raise ValueError(f"split {split!r} of {self.store.path} holds no patches")
        self.budget = int(budget)
        self.pool_size = int(pool_size)
        self.flatten = bool(flatten)
        self.render_mode = render_mode
        self.fixed_target = resolve_target(self.store, target_class, split)
        self.random_targets = targets_present(self.store, split)
        if target_onehot is None:
            target_onehot = self.fixed_target is None
        self.reward_fn = RewardFunction(reward, reward_bins, reward_values)
        self.builder = ObservationBuilder(self.store, bool(target_onehot), features)
        self.candidate_shape: tuple[int, int] = (self.pool_size, self.builder.num_features)
        self.feature_names = self.builder.names
        low = np.broadcast_to(self.builder.low, self.candidate_shape)
        high = np.broadcast_to(self.builder.high, self.candidate_shape)
        if self.flatten:
            low, high = low.ravel(), high.ravel()
        self.observation_space = spaces.Box(low.copy(), high.copy(), dtype=np.float32)
        self.action_space = spaces.Discrete(self.pool_size)
        self.reward_range = self.reward_fn.range(int(self.store.areas.max()))
        self._areas = self.store.areas
        # A plain ndarray view of the memory map: NumPy's memmap subclass slows every lookup.
        self._counts = np.asarray(self.store.counts)
        self._labelled = np.asarray(self.store.labelled)
        self.revealed_when_shown = np.append(revealed_when_shown(self.store), False)
        """bool ``[num_patches + 1]``: whether a learner may read a patch's label when it is only
        shown as a candidate (the labelled set's patches), then False, which id -1 (an empty
        slot) indexes."""
        self._reward_tables: dict[int, np.ndarray] = {}
        # Allocated once: each reset copies the split into it instead of allocating anew.
        self._remaining = np.empty_like(self.split_ids)
        self._num_remaining = 0
        self._positions = np.empty(0, dtype=np.int64)
        self._candidates = np.full(self.pool_size, -1, dtype=np.int64)
        self._mask = np.zeros(self.pool_size, dtype=np.int8)
        self._budget_left = 0
        self.target = -1
        self._target_pixels_total = 0
        self._last_patch = -1

    # ------------------------------------------------------------------ Gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; ``options={"target_class": ...}`` overrides the target for it.

        Raises:
            TypeError, ValueError: ``options`` is not a dict, or has a key other than
                ``target_class``.
        """
        checked = check_reset_options(options, ("target_class",))
        super().reset(seed=seed)
        if "target_class" in checked:
            chosen = resolve_target(self.store, checked["target_class"], self.split)
        else:
            chosen = self.fixed_target
        if chosen is None:
            chosen = int(self.np_random.choice(self.random_targets))
        self.target = chosen
        self._remaining[:] = self.split_ids
        self._num_remaining = self._remaining.size
        self._budget_left = self.budget
        self._target_pixels_total = 0
        self._last_patch = -1
        self._mask = np.ones(self.pool_size, dtype=np.int8)
        self._draw_candidates()
        info = self._info(patch_id=-1, target_pixels=0, masked=False, out_of_patches=False)
        return self._observation(), info

    def step(
        self, action: np.int64 | int
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._budget_left <= 0 or self._num_remaining == 0:
            raise RuntimeError(
                "the episode is over (budget spent or no patch left): call reset() first"
            )
        a = int(action)
        if not 0 <= a < self.pool_size or a != action:
            raise ValueError(f"action {action!r} is outside Discrete({self.pool_size})")
        masked = not self._mask[a]
        if masked:
            patch_id, pixels, reward = -1, 0, 0.0
        else:
            patch_id = int(self._candidates[a])
            pixels = int(self._counts[patch_id, self.target])
            reward = self.reward_fn.scalar(pixels, int(self._areas[patch_id]))
            # The chosen patch leaves the pool: swap it with the last remaining one.
            pos = self._positions[a]
            self._num_remaining -= 1
            self._remaining[pos] = self._remaining[self._num_remaining]
        self._budget_left -= 1
        self._target_pixels_total += pixels
        self._last_patch = patch_id
        terminated = self._budget_left == 0
        # No candidate left with budget to spend: the data ran out, not the task (see Episode End).
        truncated = not terminated and self._num_remaining == 0
        self._draw_candidates()
        info = self._info(
            patch_id=patch_id, target_pixels=pixels, masked=masked, out_of_patches=truncated
        )
        return self._observation(), reward, terminated, truncated, info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "ansi":
            return self._render_text()
        if self.render_mode == "rgb_array":
            return self._render_patch()
        return None

    # ------------------------------------------------------------------ MiSiCAL API
    def action_masks(self) -> np.ndarray:
        """Boolean ``[pool_size]`` mask of the candidate slots that hold a patch."""
        return self._mask.astype(bool)

    def compact_state(self) -> np.ndarray:
        """int64 ``[pool_size + 2]``: candidate store ids (-1 = empty), target, budget left.

        With :meth:`observation_from_compact` this lets an agent keep ids instead of
        observations (a few hundred bytes per transition instead of tens of kilobytes).
        """
        return np.concatenate([self._candidates, [self.target, self._budget_left]])

    def observation_from_compact(self, compact: np.ndarray) -> np.ndarray:
        """Rebuild observations from compact states ``[..., pool_size + 2]`` (a batch or one)."""
        compact = np.asarray(compact, dtype=np.int64)
        k = self.pool_size
        if compact.shape[-1] != k + 2:
            raise ValueError(f"compact states end in {k + 2} values, got shape {compact.shape}")
        obs = self.build_observation(
            compact[..., :k], compact[..., k], compact[..., k + 1] / self.budget
        )
        return obs

    def candidate_rewards(
        self,
        compact: np.ndarray,
        target: np.ndarray | int | None = None,
        *,
        shown: bool = False,
    ) -> np.ndarray:
        """The reward each candidate of compact states ``[..., pool_size + 2]`` would pay.

        This is what picking each slot would have paid (the chosen patch's reward in
        :meth:`step`), so an agent can learn from every shown candidate, not only the one it
        picked. It reads the oracle counts, so it is for training on labelled splits only.

        Args:
            compact: Compact states, one or a batch, as :meth:`compact_state` returns them.
            target: Classes to pay for instead of each state's own target (broadcast over the
                leading dimensions), for relabelling a transition with another target.
            shown: The candidates were only shown, not acquired: a learner may read their
                labels only in the labelled set (``init``). On ``pool`` deployment reveals the
                acquired patch's label alone, even where a simulation's pool knows them all
                (:func:`~misical_gym.envs.core.revealed_when_shown`).

        Returns:
            float64 ``[..., pool_size]`` rewards under this env's reward function; NaN where a
            slot is empty, the patch's counts are unknown (``FeatureStore.labelled``) or, with
            ``shown``, its label is not revealed.

        Raises:
            ValueError: The states do not end in ``pool_size + 2`` values, or hold an id or
                class outside the store.
        """
        compact = np.asarray(compact, dtype=np.int64)
        k = self.pool_size
        if compact.shape[-1] != k + 2:
            raise ValueError(f"compact states end in {k + 2} values, got shape {compact.shape}")
        ids = compact[..., :k]
        classes = compact[..., k] if target is None else np.asarray(target, dtype=np.int64)
        classes = np.broadcast_to(classes, compact.shape[:-1])
        if ids.size and (ids.max() >= self.store.num_patches or ids.min() < -1):
            raise ValueError(f"compact states hold ids outside [-1, {self.store.num_patches})")
        lowest, highest = (int(classes.min()), int(classes.max())) if classes.size else (0, -1)
        if lowest < 0 or highest >= self.store.num_classes:
            raise ValueError(f"target classes must lie in [0, {self.store.num_classes})")
        if lowest == highest:  # one target: its table
            rewards = self._reward_table(lowest).take(ids)
        else:
            safe = np.maximum(ids, 0)
            counts = self._counts[safe, classes[..., None]]
            rewards = self.reward_fn(counts, self._areas[safe])
            rewards[(ids < 0) | ~self._labelled[safe]] = np.nan
        if shown:
            rewards[~self.revealed_when_shown.take(ids)] = np.nan
        return rewards

    def _reward_table(self, target: int) -> np.ndarray:
        """float64 ``[num_patches + 1]``: every patch's reward for ``target`` (NaN where its
        counts are unknown), then a NaN, which id -1 (an empty slot) indexes.

        The same elementwise values as :meth:`candidate_rewards`' gather, read from one
        contiguous column instead of scattered store rows: a replay batch's 2,048 lookups
        then hit the cache (a seventh of the time, on the synthetic store). The env's arrays
        never change, so a table stays valid; a few targets' are kept.
        """

        def table() -> np.ndarray:
            rewards = self.reward_fn(self._counts[:, target], self._areas)
            rewards[~self._labelled] = np.nan
            return np.append(rewards, np.nan)

        return kept_table(self._reward_tables, target, table, _REWARD_TABLES_KEPT)

    @property
    def goal_targets(self) -> np.ndarray:
        """The classes an episode's target is drawn from; empty when the target is fixed.

        A goal-conditioned agent may relabel its transitions with any of them: the candidates an
        episode draws do not depend on its target, so a trajectory is one of every target's.
        """
        if self.fixed_target is not None:
            return np.empty(0, dtype=np.int64)
        return np.asarray(self.random_targets, dtype=np.int64)

    def build_observation(
        self,
        candidate_ids: np.ndarray,
        target: np.ndarray | int,
        budget_left: np.ndarray | float,
        *,
        may_have_empty: bool = True,
    ) -> np.ndarray:
        """The observation for candidate store ids (-1 = empty), a target and a budget fraction.

        Works on a batch (leading dimensions broadcast) and honours ``flatten``;
        ``may_have_empty=False`` promises that every id is a patch (see
        :meth:`~misical_gym.envs.core.ObservationBuilder.build`).
        """
        rows = self.builder.build(candidate_ids, target, budget_left, may_have_empty=may_have_empty)
        return rows.reshape(*rows.shape[:-2], -1) if self.flatten else rows

    # ------------------------------------------------------------------ internals
    def _draw_candidates(self) -> None:
        n, k = self._num_remaining, self.pool_size
        self._positions = self._distinct_positions(n, k)
        if n >= k:
            self._candidates = self._remaining[self._positions]
        else:  # fewer patches left than slots: pad with empty, masked slots
            self._candidates = np.full(k, -1, dtype=np.int64)
            self._candidates[:n] = self._remaining[self._positions]
            self._mask = (self._candidates >= 0).astype(np.int8)

    def _distinct_positions(self, n: int, k: int) -> np.ndarray:
        """``min(k, n)`` distinct positions in ``range(n)``, uniformly, in random order.

        Draws with replacement and keeps a draw without repeats: rejection sampling, exact, and
        nearly always accepted on a large pool, where it costs half of ``Generator.choice``'s
        argument handling. A small pool, where draws keep repeating, falls back to ``choice``.
        """
        if n >= k:
            for _ in range(3):
                # Truncation is floor here: both factors are non-negative.
                positions = (self.np_random.random(k) * n).astype(np.int64)
                if len(set(positions.tolist())) == k:
                    return positions
        return self.np_random.choice(n, size=min(k, n), replace=False)

    def _observation(self) -> np.ndarray:
        return self.build_observation(
            self._candidates,
            self.target,
            self._budget_left / self.budget,
            may_have_empty=self._num_remaining < self.pool_size,
        )

    def _info(
        self, *, patch_id: int, target_pixels: int, masked: bool, out_of_patches: bool
    ) -> dict[str, Any]:
        return {
            "action_mask": self._mask.copy(),
            "candidate_ids": self._candidates.copy(),
            "target_class": self.target,
            "patch_id": patch_id,
            "target_pixels": target_pixels,
            "masked_action": masked,
            "budget_left": self._budget_left,
            "out_of_patches": out_of_patches,
        }

    def _render_patch(self) -> np.ndarray:
        """The last chosen patch outlined (the first candidate before any pick)."""
        patch = self._last_patch if self._last_patch >= 0 else int(self._candidates[0])
        return outline_patch(self.store, patch)

    def _render_text(self) -> str:
        return describe_episode(
            self.store,
            self.split,
            target=self.target,
            budget_left=self._budget_left,
            budget=self.budget,
            target_pixels=self._target_pixels_total,
            last_patch=self._last_patch,
            live_candidates=int(self._mask.sum()),
            pool_size=self.pool_size,
            remaining=self._num_remaining,
        )


def unwrap_misical(env: gym.Env) -> MiSiCALEnv:
    """``env.unwrapped``, for code that reads the MiSiCAL env's own attributes (its store,
    target, candidate shape, masks) through any wrappers.

    Raises:
        TypeError: ``env`` is not a MiSiCAL env, nor wraps one.
    """
    unwrapped = env.unwrapped
    if not isinstance(unwrapped, MiSiCALEnv):
        raise TypeError(f"expected a MiSiCAL env, got {env} (a {type(unwrapped).__name__})")
    return unwrapped


def outline_patch(store: FeatureStore, patch: int) -> np.ndarray:
    """``rgb_array`` frame: store patch ``patch`` outlined in red in its image."""
    from misical_gym.data import store_image

    image = store_image(store, int(store.patches[patch, 0]))[0].copy()
    y0, x0, y1, x1 = store.boxes([patch])[0]
    red = np.array([255, 0, 0], dtype=np.uint8)
    image[y0, x0:x1] = image[y1 - 1, x0:x1] = red
    image[y0:y1, x0] = image[y0:y1, x1 - 1] = red
    return image


def describe_episode(
    store: FeatureStore,
    split: str,
    *,
    target: int,
    budget_left: int,
    budget: int,
    target_pixels: int,
    last_patch: int,
    live_candidates: int,
    pool_size: int,
    remaining: int,
) -> str:
    """``ansi`` frame: a one-line summary of an episode's state."""
    name = store.class_names[target] if target >= 0 else "-"
    last = "none" if last_patch < 0 else f"patch {last_patch}"
    return (
        f"MiSiCAL[{store.path.name}/{split}] target={name!r} "
        f"budget_left={budget_left}/{budget} "
        f"target_pixels={target_pixels} last_pick={last} "
        f"candidates={live_candidates}/{pool_size} "
        f"remaining={remaining}"
    )


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
