"""Double DQN with n-step prioritized replay and Polyak target updates: the MiSiCAL learner.

The agent mirrors Stable-Baselines3's interface (constructor keywords as the configuration,
``learn``/``predict``/``save``/``load``, SB3 callbacks and TensorBoard keys), so a training script
can swap it for any SB3 algorithm. Reading order: the constructor (configuration and networks),
``learn`` (one loop: act, step, store, train, log, checkpoint), ``_train_step`` (one gradient
step of Double DQN on a prioritized batch), then acting, storage and checkpoints.

Two replay modes:

- ``compact`` (default for envs with ``compact_state``): the buffer keeps each state's candidate
  store ids, target and budget left (``K + 2`` integers) and rebuilds the observations of a
  sampled batch with the env's ``observation_from_compact``; a few hundred bytes per transition.
- ``raw``: the buffer keeps the float observations themselves.

Both feed the network identical observations, so for the same seed they train identically.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger
from tqdm.auto import tqdm

from misical_gym.agents.logger import run_logger
from misical_gym.agents.networks import DeepSetQNetwork
from misical_gym.agents.policy import as_rows, candidate_masks, masked_argmax, valid_or_all
from misical_gym.agents.replay import NStepPrioritizedReplayBuffer, ReplaySample

REPLAY_MODES: tuple[str, ...] = ("auto", "compact", "raw")
TARGET_UPDATES: tuple[str, ...] = ("soft", "hard")
POLICY_KWARGS: tuple[str, ...] = ("phi_arch", "rho_arch", "dueling")
_CHECKPOINT_VERSION = 1

Callback = BaseCallback | Callable[[dict[str, Any], dict[str, Any]], bool | None] | list | None


@dataclass(frozen=True)
class _EnvSpec:
    """What the networks and the replay buffer are built for; saved with the model."""

    obs_shape: tuple[int, ...]
    candidate_shape: tuple[int, int]
    # Length of the env's compact states in compact replay mode, None in raw mode.
    compact_size: int | None

    @classmethod
    def of(cls, env: gym.Env, replay: str) -> _EnvSpec:
        """Read the spec from ``env``; ``replay`` picks the replay mode ("auto" prefers compact)."""
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ValueError(f"DDQN needs a Discrete action space, got {env.action_space}")
        if not isinstance(env.observation_space, gym.spaces.Box):
            raise ValueError(f"DDQN needs a Box observation space, got {env.observation_space}")
        num_actions = int(env.action_space.n)
        obs_shape = tuple(int(d) for d in env.observation_space.shape)
        size = int(np.prod(obs_shape))
        base = env.unwrapped
        shape = getattr(base, "candidate_shape", None)
        if shape is None and size % num_actions == 0:  # one row of features per action
            shape = (num_actions, size // num_actions)
        if shape is None or len(shape) != 2 or shape[0] != num_actions or np.prod(shape) != size:
            raise ValueError(
                f"DDQN scores one row of features per action: the observation {obs_shape} must "
                f"hold {num_actions} equal rows (env.unwrapped.candidate_shape = {shape})"
            )
        has_compact = callable(getattr(base, "compact_state", None)) and callable(
            getattr(base, "observation_from_compact", None)
        )
        if replay == "compact" and not has_compact:
            raise ValueError(
                "replay='compact' needs env.unwrapped.compact_state() and "
                "observation_from_compact(); use replay='raw' for this env"
            )
        compact = replay == "compact" or (replay == "auto" and has_compact)
        compact_size = int(np.asarray(base.compact_state()).size) if compact else None
        return cls(obs_shape, (int(shape[0]), int(shape[1])), compact_size)


class _FunctionCallback(BaseCallback):
    """A plain ``callback(locals_, globals_)``; training stops only when it returns False."""

    def __init__(self, function: Callable[[dict[str, Any], dict[str, Any]], bool | None]) -> None:
        super().__init__()
        self.function = function

    def _on_step(self) -> bool:
        return self.function(self.locals, self.globals) is not False


class DDQN:
    """Double DQN with n-step proportional prioritized replay and soft (Polyak) target updates.

    The Q-network is a :class:`~misical_gym.agents.networks.DeepSetQNetwork`: it scores every
    candidate with shared weights plus a mean-pooled context, so it is permutation-equivariant
    and works for any number of candidates. Masks (``env.unwrapped.action_masks()``) are honoured
    when acting (greedy and ε-greedy) and in the Double DQN target (masks stored in the replay).

    Example:
        ```python
        env = gym.make("MiSiCAL-Synthetic")
        model = DDQN(env, tensorboard_log="runs", seed=0).learn(50_000, progress_bar=True)
        obs, _ = env.reset()
        action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks())
        ```
    """

    def __init__(
        self,
        env: gym.Env | str,
        *,
        learning_rate: float = 1e-4,
        buffer_size: int = 100_000,
        batch_size: int = 64,
        gamma: float = 0.99,
        n_step: int = 3,
        tau: float = 0.005,
        train_freq: int = 4,
        gradient_steps: int = 1,
        learning_starts: int = 1_000,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.05,
        per_alpha: float = 0.6,
        per_beta0: float = 0.4,
        per_eps: float = 1e-6,
        target_update: str = "soft",
        target_update_interval: int = 10_000,
        max_grad_norm: float = 10.0,
        replay: str = "auto",
        checkpoint_freq: int = 0,
        checkpoint_path: str | os.PathLike[str] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: str | torch.device = "auto",
        policy_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Configure the agent and build its networks and replay buffer.

        Args:
            env: A Gymnasium env with a ``Discrete(K)`` action space whose observation holds one
                row of F features per action (``env.unwrapped.candidate_shape == (K, F)``), or
                an env id for ``gym.make``.
            learning_rate: Adam step size.
            buffer_size: Replay capacity in transitions (observation slots).
            batch_size: Transitions per gradient step.
            gamma: Discount factor.
            n_step: Length of the n-step return.
            tau: Polyak rate of the soft target update, applied after every gradient step
                (the paper's β; PER's β is ``per_beta0``).
            train_freq: Env steps between training rounds.
            gradient_steps: Gradient steps per round; -1 means ``train_freq``.
            learning_starts: Env steps of uniform random actions before training starts.
            exploration_fraction: Share of training over which ε falls linearly.
            exploration_initial_eps: ε at the start.
            exploration_final_eps: ε after ``exploration_fraction`` of training.
            per_alpha: Priority exponent α.
            per_beta0: Initial importance-sampling exponent β, annealed linearly to 1.
            per_eps: Added to ``|TD error|`` before the power α.
            target_update: ``"soft"`` (Polyak with ``tau``) or ``"hard"`` (copy every
                ``target_update_interval`` env steps, like SB3's DQN with ``tau=1``).
            target_update_interval: Env steps between hard copies.
            max_grad_norm: Gradient norm clip.
            replay: ``"compact"`` (store ids, rebuild observations from the env's store),
                ``"raw"`` (store observations) or ``"auto"`` (compact when the env offers it).
            checkpoint_freq: Write a resumable checkpoint (replay included) to
                ``checkpoint_path`` at the first episode end after every ``checkpoint_freq``
                env steps; 0 disables it.
            checkpoint_path: File of the checkpoint, overwritten atomically each time.
            stats_window_size: Episodes averaged in the ``rollout/`` and ``al/`` logs.
            tensorboard_log: Directory of TensorBoard runs (``<tb_log_name>_<n>``, as SB3).
            verbose: 1 also prints the logs to stdout.
            seed: Seeds the network initialisation, exploration, replay sampling and the env's
                first reset.
            device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
            policy_kwargs: Q-network options: ``phi_arch`` (default ``[128, 128]``),
                ``rho_arch`` (default ``[128]``), ``dueling`` (default False).

        Raises:
            ValueError: If an argument is out of range or the env does not fit.
        """
        config = {name: value for name, value in locals().items() if name not in ("self", "env")}
        if isinstance(env, str):
            env = gym.make(env)
        self._configure(config, device)
        self._setup_model(_EnvSpec.of(env, self.replay))
        self.set_env(env)

    # ------------------------------------------------------------------ configuration
    def _configure(self, config: dict[str, Any], device: str | torch.device) -> None:
        """Set and check the hyperparameters (constructor keywords become attributes)."""
        self._config = dict(config)
        for name, value in config.items():
            setattr(self, name, value)
        self.policy_kwargs = dict(config["policy_kwargs"] or {})
        checks = {
            "learning_rate > 0": self.learning_rate > 0,
            "batch_size >= 1": self.batch_size >= 1,
            "0 <= gamma <= 1": 0 <= self.gamma <= 1,
            "n_step >= 1": self.n_step >= 1,
            "buffer_size > n_step": self.buffer_size > self.n_step,
            "0 < tau <= 1": 0 < self.tau <= 1,
            "train_freq >= 1": self.train_freq >= 1,
            "gradient_steps >= 1 or -1": self.gradient_steps >= 1 or self.gradient_steps == -1,
            "learning_starts >= 0": self.learning_starts >= 0,
            "0 < exploration_fraction <= 1": 0 < self.exploration_fraction <= 1,
            "exploration eps in [0, 1]": all(
                0 <= e <= 1 for e in (self.exploration_initial_eps, self.exploration_final_eps)
            ),
            "per_alpha >= 0": self.per_alpha >= 0,
            "0 <= per_beta0 <= 1": 0 <= self.per_beta0 <= 1,
            "per_eps >= 0": self.per_eps >= 0,
            "target_update_interval >= 1": self.target_update_interval >= 1,
            "max_grad_norm > 0": self.max_grad_norm > 0,
            "checkpoint_freq >= 0": self.checkpoint_freq >= 0,
            "stats_window_size >= 1": self.stats_window_size >= 1,
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid DDQN arguments, these must hold: {', '.join(failed)}")
        if self.target_update not in TARGET_UPDATES:
            raise ValueError(
                f"target_update must be one of {TARGET_UPDATES}, got {self.target_update!r}"
            )
        if self.replay not in REPLAY_MODES:
            raise ValueError(f"replay must be one of {REPLAY_MODES}, got {self.replay!r}")
        if self.checkpoint_freq and self.checkpoint_path is None:
            raise ValueError("checkpoint_freq needs a checkpoint_path")
        unknown = set(self.policy_kwargs) - set(POLICY_KWARGS)
        if unknown:
            raise ValueError(
                f"unknown policy_kwargs {sorted(unknown)}; valid keys: {', '.join(POLICY_KWARGS)}"
            )
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)

    def _setup_model(self, spec: _EnvSpec) -> None:
        """Build the networks, optimiser, replay buffer and counters for ``spec``."""
        self._spec = spec
        num_actions, num_features = spec.candidate_shape
        # Seed only the initialisation, leaving torch's global generator as it was.
        with torch.random.fork_rng(devices=[]):
            if self.seed is not None:
                torch.manual_seed(self.seed)
            self.q_net = DeepSetQNetwork(num_features, **self.policy_kwargs).to(self.device)
        self.q_net_target = copy.deepcopy(self.q_net).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=self.learning_rate)
        compact = spec.compact_size is not None
        self.replay_buffer = NStepPrioritizedReplayBuffer(
            self.buffer_size,
            (spec.compact_size,) if compact else spec.obs_shape,
            num_actions,
            n_step=self.n_step,
            gamma=self.gamma,
            alpha=self.per_alpha,
            eps=self.per_eps,
            obs_dtype=np.int64 if compact else np.float32,
        )
        self._rng = np.random.default_rng(self.seed)
        self.env: gym.Env | None = None
        self.num_timesteps = 0
        self.exploration_rate = self.exploration_initial_eps
        self._n_updates = 0
        self._episode_num = 0
        self._total_timesteps = 0
        self._last_checkpoint = 0
        self._env_seeded = False
        # An observation and its compact state, checked against every env the replay meets.
        self._compact_probe: tuple[np.ndarray, np.ndarray] | None = None
        self._logger: Logger | None = None
        self._reset_episode_stats()
        self._forget_episode()

    def _reset_episode_stats(self) -> None:
        window = self.stats_window_size
        self._ep_returns: deque[float] = deque(maxlen=window)
        self._ep_lengths: deque[int] = deque(maxlen=window)
        self._ep_target_pixels: deque[int] = deque(maxlen=window)
        self._ep_hits: deque[int] = deque(maxlen=window)
        self._train_stats = {"loss": 0.0, "q": 0.0, "updates": 0}

    def _forget_episode(self) -> None:
        """Drop the current episode (the env is reset at the next step)."""
        self._last_obs: np.ndarray | None = None
        self._last_stored: np.ndarray | None = None
        self._pending: dict[str, Any] | None = None
        self._episode = {"return": 0.0, "length": 0, "target_pixels": 0, "hits": 0}

    # ------------------------------------------------------------------ environment
    def get_env(self) -> gym.Env | None:
        """The training env (a plain Gymnasium env, not an SB3 VecEnv)."""
        return self.env

    def set_env(self, env: gym.Env | str) -> None:
        """Train on ``env`` from now on; it must match the model's observation and actions.

        The episode in progress is abandoned: its last steps enter the replay as truncated, and
        the next :meth:`learn` resets ``env``. As in SB3, only the env the model was built with
        is seeded by ``seed``: call ``env.reset(seed=...)`` first for a run that repeats.

        Raises:
            ValueError: If the env's spaces differ, or (compact replay) it rebuilds different
                observations from the replay's store ids, i.e. it reads another feature store.
        """
        if isinstance(env, str):
            env = gym.make(env)
        if not isinstance(env, gym.Env):
            raise ValueError(
                f"DDQN trains on one gymnasium.Env, got {type(env).__name__}; pass the env "
                "itself, not a vectorised env"
            )
        spec = _EnvSpec.of(env, "compact" if self._spec.compact_size is not None else "raw")
        if spec != self._spec:
            raise ValueError(f"env does not match the model: model {self._spec}, env {spec}")
        if self._compact_probe is not None:
            self._check_compact(env, *self._compact_probe)
        self._abandon_episode()
        self.env = env
        action_masks = getattr(env.unwrapped, "action_masks", None)
        self._action_masks = action_masks if callable(action_masks) else None

    @staticmethod
    def _check_compact(env: gym.Env, compact: np.ndarray, obs: np.ndarray) -> None:
        rebuilt = env.unwrapped.observation_from_compact(compact)
        if not np.array_equal(rebuilt, obs):
            raise ValueError(
                "compact replay: this env's observation_from_compact(compact_state()) differs "
                "from its observation (another feature store, or a wrapper that changes "
                "observations); use replay='raw' or the env the replay was filled from"
            )

    @property
    def candidate_shape(self) -> tuple[int, int]:
        """``(K, F)``: candidates per observation and features per candidate it was built for."""
        return self._spec.candidate_shape

    # ------------------------------------------------------------------ training loop
    @property
    def logger(self) -> Logger:
        """The SB3 logger of the current :meth:`learn` call (callbacks record through it)."""
        if self._logger is None:
            self._logger = run_logger(self.verbose)
        return self._logger

    def learn(
        self,
        total_timesteps: int,
        callback: Callback = None,
        log_interval: int = 4,
        tb_log_name: str = "DDQN",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> DDQN:
        """Train for ``total_timesteps`` env steps.

        Args:
            total_timesteps: Env steps to take in this call.
            callback: An SB3 ``BaseCallback``, a list of them, or a plain
                ``callback(locals_, globals_)`` that returns False to stop.
            log_interval: Episodes between log writes.
            tb_log_name: TensorBoard run name; runs go to ``<tensorboard_log>/<name>_<n>``.
            reset_num_timesteps: Start counting (and the schedules, and a new TensorBoard run)
                from zero; False continues the previous run, e.g. after :meth:`load`.
            progress_bar: Show a tqdm progress bar.

        Returns:
            The agent itself.
        """
        if self.env is None:
            raise ValueError("the model has no env: pass env= to DDQN.load or call set_env()")
        self._setup_learn(total_timesteps, reset_num_timesteps, tb_log_name)
        callback = self._init_callback(callback)
        callback.on_training_start(locals(), globals())
        bar = tqdm(total=total_timesteps, disable=not progress_bar, unit="step")
        callback.on_rollout_start()
        while self.num_timesteps < self._total_timesteps:
            if self._last_obs is None:
                self._reset_env()
            progress = self.num_timesteps / self._total_timesteps
            self.exploration_rate = self._exploration_schedule(progress)
            mask = self._current_mask()
            action = self._explore(self._last_obs, mask)

            new_obs, reward, terminated, truncated, info = self.env.step(action)
            self.num_timesteps += 1
            bar.update()
            self._store(action, float(reward), new_obs, terminated, truncated)
            self._track_episode(float(reward), info)

            if (
                self.num_timesteps > self.learning_starts
                and self.num_timesteps % self.train_freq == 0
                and len(self.replay_buffer) > 0
            ):
                callback.on_rollout_end()
                steps = self.train_freq if self.gradient_steps == -1 else self.gradient_steps
                beta = self.per_beta0 + (1.0 - self.per_beta0) * progress
                for _ in range(steps):
                    self._train_step(beta)
                callback.on_rollout_start()
            if (
                self.target_update == "hard"
                and self.num_timesteps % self.target_update_interval == 0
            ):
                self.q_net_target.load_state_dict(self.q_net.state_dict())

            done = terminated or truncated
            callback.update_locals(
                {
                    "new_obs": new_obs,
                    "actions": np.array([action]),
                    "rewards": np.array([reward]),
                    "dones": np.array([done]),
                    "infos": [info],
                }
            )
            if not callback.on_step():
                break
            if done:
                self._end_episode(log_interval)
        bar.close()
        callback.on_rollout_end()
        callback.on_training_end()
        return self

    def _setup_learn(
        self, total_timesteps: int, reset_num_timesteps: bool, tb_log_name: str
    ) -> None:
        """SB3's bookkeeping: counters, schedules' horizon, logger."""
        if total_timesteps < 0:
            raise ValueError(f"total_timesteps must be non-negative, got {total_timesteps}")
        self._start_time = time.time_ns()
        if reset_num_timesteps:
            self.num_timesteps = 0
            self._episode_num = 0
            self._last_checkpoint = 0
            self._reset_episode_stats()
            self._abandon_episode()
        self._total_timesteps = total_timesteps + self.num_timesteps
        self._num_timesteps_at_start = self.num_timesteps
        self._logger = run_logger(
            self.verbose, self.tensorboard_log, tb_log_name, reset_num_timesteps
        )

    def _init_callback(self, callback: Callback) -> BaseCallback:
        if isinstance(callback, list):
            callback = CallbackList(callback)
        elif callback is None or not isinstance(callback, BaseCallback):
            callback = _FunctionCallback(callback or (lambda locals_, globals_: True))
        callback.init_callback(self)
        return callback

    def _exploration_schedule(self, progress: float) -> float:
        """ε falls linearly from the initial to the final value over ``exploration_fraction``."""
        fraction = min(progress / self.exploration_fraction, 1.0)
        return self.exploration_initial_eps + fraction * (
            self.exploration_final_eps - self.exploration_initial_eps
        )

    # ------------------------------------------------------------------ one gradient step
    def _train_step(self, beta: float) -> None:
        """Double DQN on a prioritized batch: Huber loss weighted by IS weights, |TD| priorities."""
        batch = self.replay_buffer.sample(self.batch_size, beta, self._rng)
        obs, actions, returns, next_obs, discounts, next_masks, weights = self._to_tensors(batch)
        with torch.no_grad():
            # The online net picks the next action among the valid ones; the target net rates it.
            next_q_online = self.q_net(next_obs).masked_fill(~next_masks, -torch.inf)
            next_actions = next_q_online.argmax(dim=1, keepdim=True)
            next_q = self.q_net_target(next_obs).gather(1, next_actions).squeeze(1)
            targets = returns + discounts * next_q
        q = self.q_net(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        loss = (weights * F.smooth_l1_loss(q, targets, reduction="none")).mean()

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.q_net.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.replay_buffer.update_priorities(batch.indices, (q - targets).detach().cpu().numpy())
        if self.target_update == "soft":
            with torch.no_grad():
                for target, online in zip(
                    self.q_net_target.parameters(), self.q_net.parameters(), strict=True
                ):
                    target.lerp_(online, self.tau)

        self._n_updates += 1
        stats = self._train_stats
        stats["loss"] += loss.item()
        stats["q"] += q.detach().mean().item()
        stats["updates"] += 1
        self._per_beta = beta

    def _to_tensors(self, batch: ReplaySample) -> tuple[torch.Tensor, ...]:
        """The batch on the device, with observations rebuilt in compact mode."""
        obs, next_obs = batch.obs, batch.next_obs
        if self._spec.compact_size is not None:
            obs = self.env.unwrapped.observation_from_compact(obs)
            next_obs = self.env.unwrapped.observation_from_compact(next_obs)

        def tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=self.device)

        next_masks = valid_or_all(tensor(batch.next_action_masks, torch.bool))
        return (
            tensor(obs, torch.float32),
            tensor(batch.actions, torch.int64),
            tensor(batch.returns, torch.float32),
            tensor(next_obs, torch.float32),
            tensor(batch.discounts, torch.float32),
            next_masks,
            tensor(batch.weights, torch.float32),
        )

    # ------------------------------------------------------------------ acting
    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """Greedy (or ε-greedy) actions among the valid candidates.

        Args:
            observation: One observation or a batch, flat (``[K*F]``, ``[B, K*F]``) or as rows
                (``[K, F]``, ``[B, K, F]``); K may differ from the training env's.
            state: Unused (no recurrent state); returned as is.
            episode_start: Unused.
            deterministic: False acts ε-greedily with the current exploration rate.
            action_masks: ``[K]`` or ``[B, K]`` valid actions; by default the non-empty
                candidate slots (rows that are not all zeros).

        Returns:
            The actions (a 0-d array for one observation) and ``state``.
        """
        rows, single = as_rows(observation, self.candidate_shape, len(self._spec.obs_shape) == 2)
        masks = candidate_masks(rows, action_masks)
        actions = masked_argmax(self.scores(rows), masks)
        if not deterministic:
            for i in np.flatnonzero(self._rng.random(len(actions)) < self.exploration_rate):
                actions[i] = self._random_action(masks[i])
        return (actions[0] if single else actions), state

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Q-values ``[B, K]`` of candidate rows ``[B, K, F]``."""
        with torch.no_grad():
            q = self.q_net(torch.as_tensor(rows, dtype=torch.float32, device=self.device))
        return q.cpu().numpy()

    def _random_action(self, mask: np.ndarray) -> np.int64:
        valid = np.flatnonzero(mask)
        return self._rng.choice(valid) if valid.size else self._rng.integers(mask.size)

    def _explore(self, obs: np.ndarray, mask: np.ndarray) -> int:
        """Uniform random before ``learning_starts``, then ε-greedy; valid actions only."""
        if self.num_timesteps < self.learning_starts or self._rng.random() < self.exploration_rate:
            return int(self._random_action(mask))
        num_features = self._spec.candidate_shape[1]
        return int(masked_argmax(self.scores(obs.reshape(1, -1, num_features)), mask[None])[0])

    def _current_mask(self) -> np.ndarray:
        if self._action_masks is None:
            return np.ones(self._spec.candidate_shape[0], dtype=bool)
        return np.asarray(self._action_masks(), dtype=bool)

    # ------------------------------------------------------------------ storage and episodes
    def _reset_env(self) -> None:
        """Start an episode; the model's first reset is seeded."""
        self._abandon_episode()
        obs, _ = self.env.reset(seed=None if self._env_seeded else self.seed)
        self._env_seeded = True
        self._last_obs = np.asarray(obs, dtype=np.float32)
        self._last_stored = self._replay_state(obs)
        if self._spec.compact_size is not None and self._compact_probe is None:
            probe = (self._last_stored.copy(), self._last_obs.copy())
            self._check_compact(self.env, *probe)
            self._compact_probe = probe

    def _replay_state(self, obs: np.ndarray) -> np.ndarray:
        """What the replay keeps of the env's current state: ids (compact) or the observation."""
        if self._spec.compact_size is not None:
            return np.asarray(self.env.unwrapped.compact_state(), dtype=np.int64).copy()
        return np.array(obs, dtype=np.float32)

    def _store(
        self, action: int, reward: float, new_obs: np.ndarray, terminated: bool, truncated: bool
    ) -> None:
        """Hand the previous step to the replay and hold this one back unless it ends the episode.

        A step is held back because the replay can close an episode only through a step: if the
        episode is abandoned (new env, resumed run, reset), the held step closes it as truncated.
        """
        stored = self._replay_state(new_obs)
        if self._pending is not None:
            self.replay_buffer.add(**self._pending, terminated=False, truncated=False)
        step = {
            "obs": self._last_stored,
            "action": action,
            "reward": reward,
            "next_obs": stored,
            "next_action_mask": self._current_mask(),
        }
        if terminated or truncated:
            self.replay_buffer.add(**step, terminated=terminated, truncated=truncated)
            self._pending = None
        else:
            self._pending = step
        self._last_obs = np.asarray(new_obs, dtype=np.float32)
        self._last_stored = stored

    def _abandon_episode(self) -> None:
        if self._pending is not None:
            self.replay_buffer.add(**self._pending, terminated=False, truncated=True)
        self._forget_episode()

    def _track_episode(self, reward: float, info: dict[str, Any]) -> None:
        episode = self._episode
        episode["return"] += reward
        episode["length"] += 1
        pixels = info.get("target_pixels")
        if pixels is not None:
            episode["target_pixels"] += int(pixels)
            episode["hits"] += int(pixels > 0)

    def _end_episode(self, log_interval: int) -> None:
        """Record the finished episode, log every ``log_interval`` episodes, checkpoint."""
        episode = self._episode
        self._ep_returns.append(episode["return"])
        self._ep_lengths.append(episode["length"])
        self._ep_target_pixels.append(episode["target_pixels"])
        self._ep_hits.append(episode["hits"])
        self._episode_num += 1
        self._forget_episode()
        if log_interval and self._episode_num % log_interval == 0:
            self._dump_logs()
        if (
            self.checkpoint_freq
            and self.num_timesteps - self._last_checkpoint >= self.checkpoint_freq
        ):
            self._last_checkpoint = self.num_timesteps
            self.save(self.checkpoint_path, include_replay_buffer=True)

    def _dump_logs(self) -> None:
        """Write SB3's keys plus the MiSiCAL ones, at x = ``num_timesteps``."""
        elapsed = max((time.time_ns() - self._start_time) / 1e9, sys.float_info.epsilon)
        record = self.logger.record
        record("rollout/ep_rew_mean", float(np.mean(self._ep_returns)))
        record("rollout/ep_len_mean", float(np.mean(self._ep_lengths)))
        record("rollout/exploration_rate", self.exploration_rate)
        record("al/target_pixels", float(np.mean(self._ep_target_pixels)))
        record("al/hit_rate", sum(self._ep_hits) / max(sum(self._ep_lengths), 1))
        record("time/episodes", self._episode_num, exclude="tensorboard")
        record("time/fps", int((self.num_timesteps - self._num_timesteps_at_start) / elapsed))
        record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        stats = self._train_stats
        if stats["updates"]:
            record("train/learning_rate", self.learning_rate)
            record("train/loss", stats["loss"] / stats["updates"])
            record("train/q_mean", stats["q"] / stats["updates"])
            record("train/per_beta", self._per_beta)
            record("train/n_updates", self._n_updates)
            self._train_stats = {"loss": 0.0, "q": 0.0, "updates": 0}
        self.logger.dump(step=self.num_timesteps)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike[str], include_replay_buffer: bool = False) -> Path:
        """Write the model (networks, optimiser, counters, RNG states) to one file, atomically.

        Args:
            path: Target file; ``.zip`` is appended when it has no suffix (as SB3 does).
            include_replay_buffer: Also store the replay buffer, so that training can resume
                exactly (``load`` then ``learn(..., reset_num_timesteps=False)``).

        Returns:
            The path written.
        """
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".zip")
        env_rng = None
        if self.env is not None:
            env_rng = self.env.unwrapped.np_random.bit_generator.state
        state = {
            "version": _CHECKPOINT_VERSION,
            "config": self._config,
            "spec": asdict(self._spec),
            "q_net": self.q_net.state_dict(),
            "q_net_target": self.q_net_target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "counters": {
                "num_timesteps": self.num_timesteps,
                "n_updates": self._n_updates,
                "episode_num": self._episode_num,
                "last_checkpoint": self._last_checkpoint,
                "env_seeded": self._env_seeded,
                "exploration_rate": self.exploration_rate,
            },
            "rng": self._rng.bit_generator.state,
            "env_rng": env_rng,
            "compact_probe": self._compact_probe,
            "episode_stats": {
                "returns": list(self._ep_returns),
                "lengths": list(self._ep_lengths),
                "target_pixels": list(self._ep_target_pixels),
                "hits": list(self._ep_hits),
            },
            # The held-back step belongs to the replay: without the replay it is dropped.
            "replay": self.replay_buffer.state_dict() if include_replay_buffer else None,
            "pending": self._pending if include_replay_buffer else None,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a run killed while saving keeps the previous checkpoint
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        env: gym.Env | str | None = None,
        device: str | torch.device = "auto",
    ) -> DDQN:
        """Load a model written by :meth:`save` (a pickle: load only files you trust).

        Args:
            path: The file (``.zip`` is tried when ``path`` has no suffix and does not exist).
            env: The env to train or act in; needed for :meth:`learn` and for compact replay.
                Its random state is restored, so a resumed run continues as the original would.
            device: Where to put the networks.

        Returns:
            The model, ready to ``predict`` or to ``learn(..., reset_num_timesteps=False)``.
        """
        path = Path(path)
        if not path.exists() and not path.suffix:
            path = path.with_suffix(".zip")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or state.get("version") != _CHECKPOINT_VERSION:
            raise ValueError(f"{path} is not a DDQN checkpoint of version {_CHECKPOINT_VERSION}")
        model = cls.__new__(cls)
        model._configure(state["config"], device)
        spec = state["spec"]
        model._setup_model(
            _EnvSpec(tuple(spec["obs_shape"]), tuple(spec["candidate_shape"]), spec["compact_size"])
        )
        model.q_net.load_state_dict(state["q_net"])
        model.q_net_target.load_state_dict(state["q_net_target"])
        model.optimizer.load_state_dict(state["optimizer"])
        counters = state["counters"]
        model.num_timesteps = counters["num_timesteps"]
        model._n_updates = counters["n_updates"]
        model._episode_num = counters["episode_num"]
        model._last_checkpoint = counters["last_checkpoint"]
        model._env_seeded = counters["env_seeded"]
        model.exploration_rate = counters["exploration_rate"]
        model._rng.bit_generator.state = state["rng"]
        model._compact_probe = state["compact_probe"]
        stats = state["episode_stats"]
        model._ep_returns.extend(stats["returns"])
        model._ep_lengths.extend(stats["lengths"])
        model._ep_target_pixels.extend(stats["target_pixels"])
        model._ep_hits.extend(stats["hits"])
        if state["replay"] is not None:
            model.replay_buffer.load_state_dict(state["replay"])
            model._pending = state["pending"]
        if env is not None:
            model.set_env(env)
            if state["env_rng"] is not None:
                bit_generator = getattr(np.random, state["env_rng"]["bit_generator"])()
                bit_generator.state = state["env_rng"]
                model.env.unwrapped.np_random = np.random.Generator(bit_generator)
        return model

    def save_replay_buffer(self, path: str | os.PathLike[str]) -> None:
        """Write the replay buffer alone (SB3's ``CheckpointCallback(save_replay_buffer=True)``)."""
        torch.save({"replay": self.replay_buffer.state_dict(), "pending": self._pending}, path)

    def load_replay_buffer(self, path: str | os.PathLike[str]) -> None:
        """Restore a replay buffer written by :meth:`save_replay_buffer`."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.replay_buffer.load_state_dict(state["replay"])
        self._pending = state["pending"]
