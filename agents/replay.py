"""n-step proportional prioritized replay (Schaul et al., 2016) on a compiled sum tree.

Storage is one ring of ``capacity`` slots, each a single record: an observation, the valid-action
mask at that observation and, if a step was taken from it, the step's action, n-step return,
discount and bootstrap offset ``d``. The step's bootstrap observation is simply slot ``s + d``:
the observation of the step ``k`` later or, at an episode end, one extra slot holding the
episode's final ``next_obs``. Every observation is therefore stored once, ``next_obs`` costs
memory only at episode ends, and a sampled transition is read from two nearby records, which is
what makes sampling from a large buffer fast (one cache miss per record, not one per field).

The buffer takes interleaved episode streams (``add(..., stream=i)``, one per sub-env of a
vector env, made on first use):
each stream's steps take the next free slot as they come, so with one stream ``d`` equals the
window length ``k``, and with N streams stepped together it is about ``N * k``. Slots are
allocated in order, so a step's bootstrap slot is always newer than the step and is never
overwritten first.

A step becomes sampleable (enters the tree at the running max priority) only once its n-step
window is closed: ``n_step`` steps have followed it in its episode, or its episode has ended.
Windows that are still open are never sampled, so a window never crosses an episode end or the
write pointer, and its contents never change after it enters the tree.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from misical_gym.agents.sum_tree import SumTree

_UINT16_MAX = int(np.iinfo(np.uint16).max)
"""The largest stream id and bootstrap offset; read once (``np.iinfo`` costs microseconds, and
every ``add`` checks both)."""

_STATE_VERSION = 2
"""Version 2 has per-stream write state and a two-byte bootstrap offset; version 1 states are
refused."""


class ReplaySample(NamedTuple):
    """A batch of n-step transitions.

    The fields other than ``weights`` and ``indices`` are views into the batch's own copy of the
    sampled records, so they are strided (``torch.as_tensor`` and ``np.ascontiguousarray`` take
    them as they are) and independent of the buffer.

    Attributes:
        obs: ``[B, *obs_shape]`` observations, in the buffer's ``obs_dtype``.
        actions: ``[B]`` int64 actions.
        returns: ``[B]`` float32 discounted reward sums over each window.
        next_obs: ``[B, *obs_shape]`` bootstrap observations (after the window's last step).
        discounts: ``[B]`` float32 ``gamma**k`` for a window of true length ``k``; 0.0 if the
            window ended in a termination.
        next_action_masks: ``[B, num_actions]`` bool valid actions at the bootstrap observation.
        weights: ``[B]`` float32 importance-sampling weights, largest equal to 1.
        indices: ``[B]`` int64 buffer slots, for :meth:`update_priorities`.
    """

    obs: np.ndarray
    actions: np.ndarray
    returns: np.ndarray
    next_obs: np.ndarray
    discounts: np.ndarray
    next_action_masks: np.ndarray
    weights: np.ndarray
    indices: np.ndarray


@njit(cache=True, inline="always")
def _offset(row: np.ndarray, boot_at: int) -> int:
    """The little-endian uint16 bootstrap offset of a record's bytes (0: not sampleable)."""
    return int(row[boot_at]) | (int(row[boot_at + 1]) << 8)


@njit(cache=True)
def _gather_records(
    raw: np.ndarray,
    indices: np.ndarray,
    priorities: np.ndarray,
    beta: float,
    boot_at: int,
    rows: np.ndarray,
    next_rows: np.ndarray,
    weights: np.ndarray,
) -> None:
    """Copy the sampled records and their bootstrap records; compute the IS weights."""
    capacity, width = raw.shape
    # Sampled records first: independent loads whose cache misses overlap. ``slot`` is held in
    # a local because byte stores may alias anything and would otherwise force a reload of
    # ``indices[i]`` per byte. With one stream a bootstrap record is at most n_step records
    # further, usually on a cache line just loaded.
    for i in range(indices.shape[0]):
        slot = indices[i]
        for c in range(width):
            rows[i, c] = raw[slot, c]
    for i in range(indices.shape[0]):
        boot = indices[i] + _offset(rows[i], boot_at)
        if boot >= capacity:
            boot -= capacity
        for c in range(width):
            next_rows[i, c] = raw[boot, c]
    # (N * P(i))**-beta over the batch's largest weight is (p_min / p_i)**beta: N and the total
    # cancel, which saves two roundings.
    p_min = priorities.min()
    for i in range(indices.shape[0]):
        weights[i] = (p_min / priorities[i]) ** beta


@njit(cache=True)
def _td_priorities(
    td_errors: np.ndarray,
    eps: float,
    alpha: float,
    raw: np.ndarray,
    boot_at: int,
    indices: np.ndarray,
    priorities: np.ndarray,
    live: np.ndarray,
) -> tuple[int, float]:
    """Fill ``priorities`` and ``live`` (slot still sampleable).

    Returns:
        The number of live slots and their largest priority; the count is -1 if an index is out
        of range and -2 if a TD error is not finite.
    """
    num_live, max_priority = 0, 0.0
    for i in range(indices.shape[0]):
        if indices[i] < 0 or indices[i] >= raw.shape[0]:
            return -1, 0.0
        if not np.isfinite(td_errors[i]):
            return -2, 0.0
        priorities[i] = (abs(td_errors[i]) + eps) ** alpha
        live[i] = _offset(raw[indices[i]], boot_at) > 0
        if live[i]:
            num_live += 1
            max_priority = max(max_priority, priorities[i])
    return num_live, max_priority


class NStepPrioritizedReplayBuffer:
    """Proportional prioritized replay of n-step transitions.

    ``capacity`` counts observation slots: one per step, plus one per episode end for the final
    ``next_obs``. A full buffer thus holds ``capacity`` minus the number of episode ends it
    contains transitions; the oldest slot is overwritten first.

    IS weights are normalised by the largest weight in the sampled batch, so each batch's
    largest weight is exactly 1.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        num_actions: int,
        n_step: int = 3,
        gamma: float = 0.99,
        alpha: float = 0.6,
        eps: float = 1e-6,
        obs_dtype: np.dtype | type = np.float32,
    ) -> None:
        """Allocate an empty buffer.

        Args:
            capacity: Observation slots; must exceed ``n_step``.
            obs_shape: Shape of one observation.
            num_actions: Size of the discrete action space.
            n_step: Window length of the n-step return, at least 1.
            gamma: Discount factor in ``[0, 1]``.
            alpha: Priority exponent, at least 0 (0 gives uniform sampling).
            eps: Added to ``|td_error|`` before the power, at least 0.
            obs_dtype: Storage dtype of observations, e.g. a compact integer encoding.

        Raises:
            ValueError: If an argument is out of range.
        """
        if not isinstance(n_step, int | np.integer) or n_step < 1:
            raise ValueError(f"n_step must be a positive integer, got {n_step!r}")
        if not isinstance(capacity, int | np.integer) or capacity <= n_step:
            raise ValueError(f"capacity must be an integer above n_step={n_step}, got {capacity!r}")
        if not isinstance(num_actions, int | np.integer) or num_actions < 1:
            raise ValueError(f"num_actions must be a positive integer, got {num_actions!r}")
        if n_step > np.iinfo(np.uint8).max:
            raise ValueError(f"n_step must be at most 255, got {n_step}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        if not (alpha >= 0.0 and np.isfinite(alpha)):
            raise ValueError(f"alpha must be finite and non-negative, got {alpha}")
        if not (eps >= 0.0 and np.isfinite(eps)):
            raise ValueError(f"eps must be finite and non-negative, got {eps}")
        self.capacity = int(capacity)
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.num_actions = int(num_actions)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.obs_dtype = np.dtype(obs_dtype)

        # Aligned fields, widest first: a batch's fields are then aligned strided views.
        self._record = np.dtype(
            [
                ("action", np.int64),
                ("return", np.float32),
                ("discount", np.float32),
                ("obs", self.obs_dtype, self.obs_shape),
                ("mask", np.bool_, (self.num_actions,)),
                # Slots from a sampleable step to its bootstrap observation; 0: not sampleable.
                ("boot", "<u2"),
                # Slots from a taken step to its stream's next observation (1 with one stream).
                ("succ", "<u2"),
            ],
            align=True,
        )
        # One byte matrix, with a record view for field access by name.
        self._raw = np.zeros((self.capacity, self._record.itemsize), dtype=np.uint8)
        fields = self._record.fields
        assert fields is not None  # a structured dtype has them
        self._boot_at = fields["boot"][1]
        self._slots = self._raw.view(self._record).reshape(self.capacity)
        self._tree = SumTree(self.capacity)
        self._max_priority = 1.0
        self._num_sampleable = 0
        self._rng = np.random.default_rng()

        # Write state: the next slot to allocate and, per stream, the slot of its current
        # observation (-1 between episodes) and the slots and rewards of its open windows.
        # Pinned slots (current and open) must not be reallocated before they close.
        self._head = 0
        self._cursors = [-1]
        self._open_slots: list[list[int]] = [[]]
        self._open_rewards: list[list[float]] = [[]]
        self._pinned = np.zeros(self.capacity, dtype=bool)
        self._all_valid = np.ones(self.num_actions, dtype=bool)
        self._is_float = self.obs_dtype.kind in "fc"

    @property
    def num_streams(self) -> int:
        """Episode streams used so far (at least one)."""
        return len(self._cursors)

    def __len__(self) -> int:
        """Number of sampleable transitions."""
        return self._num_sampleable

    @property
    def memory_bytes_per_transition(self) -> float:
        """Bytes allocated per slot: its record plus its share of the sum tree."""
        return self._slots.itemsize + self._tree.nbytes / self.capacity

    def add(
        self,
        obs: np.ndarray,
        action: int,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        truncated: bool,
        next_action_mask: np.ndarray | None = None,
        stream: int = 0,
    ) -> None:
        """Store one environment step of episode stream ``stream``.

        Within an episode, ``obs`` must equal the stream's previous ``next_obs``; after a call
        with ``terminated`` or ``truncated``, the stream's next call starts a new episode.

        Args:
            obs: Observation the action was taken in.
            action: Discrete action in ``[0, num_actions)``.
            reward: Finite reward.
            next_obs: Observation after the step (the final one if the episode ended).
            terminated: The episode reached a terminal state (no bootstrap).
            truncated: The episode was cut off (bootstrap from ``next_obs``).
            next_action_mask: ``[num_actions]`` bool valid actions at ``next_obs``; all valid
                when omitted.
            stream: The episode stream, a non-negative integer; a new one starts empty. Every
                stream's open windows stay in the buffer, so ``capacity`` must exceed
                ``n_step`` slots per stream.

        Raises:
            ValueError: On a shape mismatch, an action or stream out of range, a non-finite
                reward or an ``obs`` that does not continue the episode.
        """
        obs = self._check_obs(obs, "obs")
        next_obs = self._check_obs(next_obs, "next_obs")
        if next_action_mask is None:
            mask = self._all_valid
        else:
            mask = np.asarray(next_action_mask, dtype=bool)
            if mask.shape != (self.num_actions,):
                raise ValueError(
                    f"next_action_mask must have shape ({self.num_actions},), got {mask.shape}"
                )
        action = int(action)
        if not 0 <= action < self.num_actions:
            raise ValueError(f"action must lie in [0, {self.num_actions}), got {action}")
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        if not 0 <= stream <= _UINT16_MAX:
            raise ValueError(f"stream must be a non-negative 16-bit integer, got {stream}")
        while stream >= self.num_streams:
            self._cursors.append(-1)
            self._open_slots.append([])
            self._open_rewards.append([])

        # Tree writes of this step (slots leaving and entering the tree), applied as one batch.
        tree_slots: list[int] = []
        tree_priorities: list[float] = []
        slots = self._slots
        slot = self._cursors[stream]
        if slot >= 0:
            stored = slots["obs"][slot]
            if not ((stored == obs).all() or np.array_equal(stored, obs, equal_nan=self._is_float)):
                raise ValueError(
                    "obs differs from the previous step's next_obs, but the previous step did not "
                    "end the episode; pass terminated or truncated at episode ends"
                )
        else:
            slot = self._allocate(tree_slots, tree_priorities)
            slots["obs"][slot] = obs
        slots["action"][slot] = action
        next_slot = self._allocate(tree_slots, tree_priorities)
        slots["succ"][slot] = (next_slot - slot) % self.capacity
        slots["obs"][next_slot] = next_obs
        slots["mask"][next_slot] = mask

        open_slots, open_rewards = self._open_slots[stream], self._open_rewards[stream]
        open_slots.append(slot)
        open_rewards.append(reward)
        if terminated or truncated:
            # Close every open window; each ends here with its true length k.
            for j, start in enumerate(open_slots):
                self._close(
                    start, next_slot, open_rewards[j:], terminated, tree_slots, tree_priorities
                )
            open_slots.clear()
            open_rewards.clear()
            self._pinned[next_slot] = False
            self._cursors[stream] = -1
        else:
            if len(open_rewards) == self.n_step:
                self._close(
                    open_slots[0], next_slot, open_rewards, False, tree_slots, tree_priorities
                )
                del open_slots[0], open_rewards[0]
            self._cursors[stream] = next_slot
        if tree_slots:
            self._tree.update(np.array(tree_slots), np.array(tree_priorities))

    def sample(
        self, batch_size: int, beta: float, rng: np.random.Generator | None = None
    ) -> ReplaySample:
        """Draw a stratified batch with probability proportional to priority.

        The priority mass is cut into ``batch_size`` equal strata and one transition is drawn
        uniformly by mass inside each, so a batch covers the distribution evenly.

        Args:
            batch_size: Number of transitions, at least 1.
            beta: IS exponent, at least 0 (the agent anneals it towards 1).
            rng: Random generator; the buffer's own (saved in :meth:`state_dict`) when omitted.

        Returns:
            The batch; the same slot may appear more than once.

        Raises:
            ValueError: If the buffer has no sampleable transition or an argument is invalid.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not beta >= 0.0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        if self._num_sampleable == 0:
            raise ValueError(
                "the buffer has no sampleable transition yet (a step is sampleable once its "
                "n-step window has closed)"
            )
        indices, priorities = self._tree.sample(batch_size, self._rng if rng is None else rng)
        rows = np.empty((batch_size, self._record.itemsize), dtype=np.uint8)
        next_rows = np.empty_like(rows)
        weights = np.empty(batch_size, dtype=np.float32)
        _gather_records(
            self._raw, indices, priorities, float(beta), self._boot_at, rows, next_rows, weights
        )
        records = rows.view(self._record)[:, 0]
        next_records = next_rows.view(self._record)[:, 0]
        return ReplaySample(
            obs=records["obs"],
            actions=records["action"],
            returns=records["return"],
            next_obs=next_records["obs"],
            discounts=records["discount"],
            next_action_masks=next_records["mask"],
            weights=weights,
            indices=indices,
        )

    def windows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The steps inside the n-step windows of sampled slots, to recompute their returns.

        Args:
            indices: ``[B]`` sampled slots (``ReplaySample.indices``).

        Returns:
            ``obs [B, n_step, *obs_shape]`` and ``actions [B, n_step]`` of the window's steps in
            order, and ``lengths [B]``, each window's true length k: entries at ``j >= k`` lie
            outside the window and mean nothing.
        """
        indices = np.asarray(indices, dtype=np.int64)
        # Follow each window's stream from step to step (other streams' slots lie between them)
        # and count its steps up to the bootstrap slot.
        slots = np.empty((indices.size, self.n_step), dtype=np.int64)
        slots[:, 0] = indices
        for j in range(1, self.n_step):
            slots[:, j] = (slots[:, j - 1] + self._slots["succ"][slots[:, j - 1]]) % self.capacity
        boot = (indices + self._slots["boot"][indices]) % self.capacity
        reached = slots[:, 1:] == boot[:, None]
        lengths = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, self.n_step)
        records = self._slots[slots]
        return records["obs"], records["action"], lengths

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """Set priorities ``(|td_error| + eps) ** alpha`` and raise the running max priority.

        Indices of slots that are no longer sampleable (overwritten since they were sampled)
        are skipped, so a stale index never revives a slot.

        Args:
            indices: Slots from :attr:`ReplaySample.indices`; if one repeats, its last TD error
                wins.
            td_errors: Finite TD errors, one per index.

        Raises:
            ValueError: On mismatched lengths, an index out of range or a non-finite TD error.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        td_errors = np.asarray(td_errors, dtype=np.float64).reshape(-1)
        if indices.shape != td_errors.shape:
            raise ValueError(
                f"got {indices.size} indices but {td_errors.size} TD errors; they must match"
            )
        priorities = np.empty(indices.size, dtype=np.float64)
        live = np.empty(indices.size, dtype=bool)
        num_live, max_live = _td_priorities(
            td_errors, self.eps, self.alpha, self._raw, self._boot_at, indices, priorities, live
        )
        if num_live == -1:
            raise ValueError(f"indices must lie in [0, {self.capacity})")
        if num_live == -2:
            raise ValueError("td_errors must be finite")
        if num_live < indices.size:
            indices, priorities = indices[live], priorities[live]
        if num_live:
            self._tree.update(indices, priorities)
            self._max_priority = max(self._max_priority, max_live)

    def state_dict(self) -> dict[str, Any]:
        """Return a copy of the full state: config, storage, tree, write state and RNG."""
        return {
            "version": _STATE_VERSION,
            "config": self._config(),
            "slots": self._raw.copy(),
            "tree": self._tree.state_dict(),
            "max_priority": self._max_priority,
            "head": self._head,
            "cursors": list(self._cursors),
            "open_slots": [list(slots) for slots in self._open_slots],
            "open_rewards": [list(rewards) for rewards in self._open_rewards],
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` of a buffer with the same configuration.

        Args:
            state: The saved state.

        Raises:
            ValueError: If the state was made by a differently configured buffer or is malformed.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported replay state version {state.get('version')!r}")
        if state["config"] != self._config():
            raise ValueError(
                f"replay state was saved with config {state['config']}, "
                f"but this buffer has {self._config()}"
            )
        raw = np.array(state["slots"], dtype=np.uint8)
        if raw.shape != self._raw.shape:
            raise ValueError(
                f"replay state slots have shape {raw.shape}, expected {self._raw.shape}"
            )
        slots = raw.view(self._record).reshape(self.capacity)
        tree = SumTree(self.capacity)
        tree.load_state_dict(state["tree"])
        sampleable = slots["boot"] > 0
        if np.any((tree[np.arange(self.capacity)] > 0) != sampleable):
            raise ValueError("replay state's priorities do not match its sampleable slots")
        head = int(state["head"])
        cursors = [int(c) for c in state["cursors"]]
        open_slots = [[int(s) for s in stream] for stream in state["open_slots"]]
        open_rewards = [[float(r) for r in stream] for stream in state["open_rewards"]]
        streams = (cursors, open_slots, open_rewards)
        if (
            not 0 <= head < self.capacity
            or not cursors
            or any(len(part) != len(cursors) for part in streams)
            or any(not -1 <= c < self.capacity for c in cursors)
            or any(
                len(s) != len(r) or len(s) >= self.n_step or (s and c < 0)
                for c, s, r in zip(*streams, strict=True)
            )
            or any(not 0 <= slot < self.capacity for stream in open_slots for slot in stream)
        ):
            raise ValueError("replay state has an invalid write position or pending window")
        pinned = np.zeros(self.capacity, dtype=bool)
        pinned[[c for c in cursors if c >= 0]] = True
        pinned[[slot for stream in open_slots for slot in stream]] = True
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]

        self._raw = raw
        self._slots = slots
        self._tree = tree
        self._max_priority = float(state["max_priority"])
        self._num_sampleable = int(sampleable.sum())
        self._head = head
        self._cursors = cursors
        self._open_slots = open_slots
        self._open_rewards = open_rewards
        self._pinned = pinned
        self._rng = rng

    def _config(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "obs_shape": list(self.obs_shape),
            "num_actions": self.num_actions,
            "n_step": self.n_step,
            "gamma": self.gamma,
            "alpha": self.alpha,
            "eps": self.eps,
            "obs_dtype": self.obs_dtype.str,
        }

    def _check_obs(self, obs: np.ndarray, name: str) -> np.ndarray:
        obs = np.asarray(obs)
        if obs.shape != self.obs_shape:
            raise ValueError(f"{name} must have shape {self.obs_shape}, got {obs.shape}")
        # Refuse lossy kinds of cast (float into an integer encoding), allow narrowing precision.
        if not np.can_cast(obs.dtype, self.obs_dtype, casting="same_kind"):
            raise ValueError(f"{name} of dtype {obs.dtype} cannot be stored as {self.obs_dtype}")
        return obs.astype(self.obs_dtype, copy=False)

    def _allocate(self, tree_slots: list[int], tree_priorities: list[float]) -> int:
        """The next slot, pinned, with the step it held made unsampleable."""
        slot = self._head
        if self._pinned[slot]:  # only when a stream's open window is a whole ring old
            raise ValueError(
                f"the replay's {self.capacity} slots cannot hold the open windows of its "
                f"{self.num_streams} streams; enlarge capacity or step every stream regularly"
            )
        self._head = (slot + 1) % self.capacity
        self._pinned[slot] = True
        if self._slots["boot"][slot]:
            self._slots["boot"][slot] = 0
            self._num_sampleable -= 1
            tree_slots.append(slot)
            tree_priorities.append(0.0)
        return slot

    def _close(
        self,
        slot: int,
        boot_slot: int,
        rewards: list[float],
        terminated: bool,
        tree_slots: list[int],
        tree_priorities: list[float],
    ) -> None:
        """Close the window of the step in ``slot``: ``rewards``, then ``boot_slot``'s state."""
        ret = 0.0
        for reward in reversed(rewards):
            ret = reward + self.gamma * ret
        offset = (boot_slot - slot) % self.capacity
        if offset > _UINT16_MAX:
            raise ValueError(
                f"a bootstrap {offset} slots after its step does not fit the record's offset; "
                "use fewer streams"
            )
        self._slots["return"][slot] = ret
        self._slots["discount"][slot] = 0.0 if terminated else self.gamma ** len(rewards)
        self._slots["boot"][slot] = offset
        self._pinned[slot] = False
        self._num_sampleable += 1
        tree_slots.append(slot)
        tree_priorities.append(self._max_priority)
