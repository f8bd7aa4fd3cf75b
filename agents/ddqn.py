"""Double DQN with n-step prioritized replay and Polyak target updates: the MiSiCAL learner.

Read it top to bottom: :class:`DDQNConfig` (every hyperparameter, validated), then
:class:`DDQN`: the networks and the replay, acting (ε-greedy over valid candidates), the replay
step (what each transition stores), the update (one gradient step of Double DQN on a
prioritized batch, with counterfactual targets for every shown candidate and hindsight
relabelling where the env knows the rewards), then checkpoints. The SB3 shell around it
(``learn``, ``set_env``, logger, callbacks, episode statistics) is
:class:`~misical_gym.agents.learner.Learner`, so a training script can swap this agent for any
SB3 algorithm.

Two replay modes:

- ``compact`` (default for envs with ``compact_state``): the buffer keeps each state's candidate
  store ids, target and budget left (``K + 2`` integers) and rebuilds the observations of a
  sampled batch with the env's ``observation_from_compact``; a few hundred bytes per transition.
- ``raw``: the buffer keeps the float observations themselves.

Both feed the network identical observations, so for the same seed they train identically.
With ``features_on_device`` compact replay rebuilds them on the agent's device from a copy of
the store's feature table (:class:`~misical_gym.agents.device_observations.DeviceObservations`),
again identical.

Vector envs (a Gymnasium ``VectorEnv`` of N MiSiCAL envs: ``gym.make_vec(id, num_envs=N)`` in
``"sync"`` mode, or the native ``"vector_entry_point"`` env) give N transitions per step, one
n-step stream per sub-env in the replay. Compact replay reads the native env's batched
``compact_state`` and a ``SyncVectorEnv``'s sub-envs' one by one; other vector envs
(``AsyncVectorEnv``) use raw replay.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.callbacks import BaseCallback

from misical_gym.agents.device_observations import DeviceObservations
from misical_gym.agents.learner import EPISODE_KEYS, Learner, TrainingState
from misical_gym.agents.networks import (
    MAX_LAYERS,
    MAX_WIDTH,
    DeepSetQNetwork,
    NumpyQNetwork,
    mean_weights_numpy,
)
from misical_gym.agents.policy import as_rows, candidate_masks, masked_argmax, valid_or_all
from misical_gym.agents.replay import NStepPrioritizedReplayBuffer, ReplaySample
from misical_gym.atomic import atomic_path
from misical_gym.runtime import resolve_device

REPLAY_MODES: tuple[str, ...] = ("auto", "compact", "raw")
TARGET_UPDATES: tuple[str, ...] = ("soft", "hard")
POLICY_KWARGS: tuple[str, ...] = ("phi_arch", "rho_arch", "dueling")
_CHECKPOINT_VERSION = 2
"""Version 2 holds plain data and tensors only (read with ``weights_only=True``); version 1
files were pickles and are refused."""
_FORMER_NETWORK: dict[str, Any] = {"phi_arch": [128, 128], "rho_arch": [128]}
"""The default Q-network of checkpoints that do not name theirs (written before the default
became phi [32], rho [32]); their ``policy_kwargs`` override it."""


@dataclass(frozen=True)
class DDQNConfig:
    """Every hyperparameter of :class:`DDQN`; the constructor's keywords are these fields."""

    learning_rate: float = 1e-4
    """Adam step size."""
    buffer_size: int = 100_000
    """Replay capacity in transitions (observation slots)."""
    batch_size: int = 64
    """Transitions per gradient step."""
    gamma: float = 0.99
    """Discount factor."""
    n_step: int = 3
    """Length of the n-step return."""
    tau: float = 0.005
    """Polyak rate of the soft target update, applied after every gradient step (the paper's β;
    PER's β is ``per_beta0``)."""
    train_freq: int = 4
    """Env steps between training rounds. On a vector env of N sub-envs a step is N env steps,
    so the gradient steps per transition do not depend on N (SB3 counts vector steps)."""
    gradient_steps: int = 1
    """Gradient steps per round; -1 means ``train_freq``."""
    learning_starts: int = 1_000
    """Env steps of uniform random actions before training starts."""
    exploration_fraction: float = 0.1
    """Share of training over which ε falls linearly."""
    exploration_initial_eps: float = 1.0
    """ε at the start."""
    exploration_final_eps: float = 0.05
    """ε after ``exploration_fraction`` of training."""
    per_alpha: float = 0.6
    """Priority exponent α."""
    per_beta0: float = 0.4
    """Initial importance-sampling exponent β, annealed linearly to 1."""
    per_eps: float = 1e-6
    """Added to ``|TD error|`` before the power α."""
    target_update: str = "soft"
    """``"soft"`` (Polyak with ``tau``) or ``"hard"`` (copy every ``target_update_interval``
    env steps, like SB3's DQN with ``tau=1``)."""
    target_update_interval: int = 10_000
    """Env steps between hard copies."""
    max_grad_norm: float = 10.0
    """Gradient norm clip."""
    replay: str = "auto"
    """``"compact"`` (store ids, rebuild observations from the env's store), ``"raw"`` (store
    observations) or ``"auto"`` (compact when the env offers it)."""
    checkpoint_freq: int = 0
    """Write a resumable checkpoint (replay included) to ``checkpoint_path`` at the first
    episode end after every ``checkpoint_freq`` env steps; 0 disables it."""
    checkpoint_path: str | None = None
    """File of the checkpoint, overwritten atomically each time."""
    stats_window_size: int = 100
    """Episodes averaged in the ``rollout/`` and ``al/`` logs."""
    tensorboard_log: str | None = None
    """Directory of TensorBoard runs (``<tb_log_name>_<n>``, as SB3)."""
    verbose: int = 0
    """1 also prints the logs to stdout."""
    seed: int | None = None
    """Seeds the network initialisation, exploration, replay sampling and the env's first
    reset."""
    device: str = "auto"
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``..."""
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    """Q-network options: ``phi_arch`` (default ``[16]``), ``rho_arch`` (default
    ``[16]``), ``dueling`` (default False)."""
    goal_policy_kwargs: dict[str, Any] | None = None
    """Q-network options over ``policy_kwargs``'s on an env that draws a new target every
    episode (``env.unwrapped.goal_targets`` not empty), where one network serves every target
    and may need more room; None: ``policy_kwargs`` alone. ``ddqn.yml`` sets phi [32], rho
    [32]."""
    counterfactual_targets: bool = True
    """Train every shown candidate, not only the picked one: a sampled state's valid candidate
    ``a_i`` gets the taken action's n-step target shifted by ``r(a_i) - r(a_taken)``, the
    immediate rewards the env's ``candidate_rewards`` reports. Exact up to the picked patch's
    effect on later draws. Only labels a learner may read count: every shown candidate's in the
    labelled set (``init``), only the acquired patch's on ``pool``, whose other labels a
    deployment never sees, even where an evaluation's pool knows them. A sample whose rewards
    are unknown (``pool``, raw replay, an env without ``candidate_rewards``) keeps the plain
    Double DQN update; False is the paper's plain Double DQN throughout."""
    features_on_device: bool = False
    """Compact replay: hold the store's feature table as a tensor on ``device`` and rebuild
    sampled observations there, so that only store ids cross to the device. Meant for a GPU: on
    the CPU it trains exactly as without it, but torch's gather is slower than NumPy's."""
    hindsight_fraction: float = 0.5
    """Share of each batch relabelled with another target when the env draws a new target per
    episode (``env.unwrapped.goal_targets`` not empty; compact replay): the state's target
    becomes one whose rewards differ between the shown candidates (whose labels a learner may
    read, as with ``counterfactual_targets``), and the n-step return is recomputed exactly from
    the window's picked patches. 0 disables it."""

    def __post_init__(self) -> None:
        # Plain data only, so a checkpoint holds no pickled objects.
        if self.checkpoint_path is not None:
            object.__setattr__(self, "checkpoint_path", os.fspath(self.checkpoint_path))
        object.__setattr__(self, "policy_kwargs", dict(self.policy_kwargs or {}))
        if self.goal_policy_kwargs is not None:
            object.__setattr__(self, "goal_policy_kwargs", dict(self.goal_policy_kwargs))
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
            "0 <= hindsight_fraction <= 1": 0 <= self.hindsight_fraction <= 1,
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid DDQN arguments, these must hold: {', '.join(failed)}")
        if self.target_update not in TARGET_UPDATES:
            raise ValueError(
                f"target_update must be one of {TARGET_UPDATES}, got {self.target_update!r}"
            )
        for name in ("counterfactual_targets", "features_on_device"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.replay not in REPLAY_MODES:
            raise ValueError(f"replay must be one of {REPLAY_MODES}, got {self.replay!r}")
        if self.checkpoint_freq and self.checkpoint_path is None:
            raise ValueError("checkpoint_freq needs a checkpoint_path")
        for name in ("policy_kwargs", "goal_policy_kwargs"):
            unknown = set(getattr(self, name) or {}) - set(POLICY_KWARGS)
            if unknown:
                raise ValueError(
                    f"unknown {name} {sorted(unknown)}; valid keys: {', '.join(POLICY_KWARGS)}"
                )

    @classmethod
    def with_overrides(cls, config: DDQNConfig | None, overrides: dict[str, Any]) -> DDQNConfig:
        """``config`` (default: the defaults) with ``overrides``; unknown keys are an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(
                f"unknown DDQN argument(s) {', '.join(unknown)}; valid ones: {', '.join(names)}"
            )
        return dataclasses.replace(config or cls(), **overrides)


class CompactStateEnv(Protocol):
    """An env whose state compact replay stores as ids (the MiSiCAL envs are ones)."""

    def compact_state(self) -> np.ndarray: ...

    def observation_from_compact(self, compact: np.ndarray) -> np.ndarray: ...


class RewardOracleEnv(CompactStateEnv, Protocol):
    """A compact-state env that reports every candidate's reward (the MiSiCAL env does)."""

    goal_targets: np.ndarray

    def candidate_rewards(
        self,
        compact: np.ndarray,
        target: np.ndarray | int | None = None,
        *,
        shown: bool = False,
    ) -> np.ndarray: ...


class _SyncCompact:
    """A ``SyncVectorEnv``'s compact states, read from its sub-envs: ``[N, C]``."""

    def __init__(self, env: gym.vector.SyncVectorEnv) -> None:
        self._bases = [cast(CompactStateEnv, sub.unwrapped) for sub in env.envs]

    def compact_state(self) -> np.ndarray:
        return np.stack([base.compact_state() for base in self._bases])

    def observation_from_compact(self, compact: np.ndarray) -> np.ndarray:
        return self._bases[0].observation_from_compact(compact)


def _compact_env(env: Any) -> CompactStateEnv:
    """What compact replay reads states from, whose methods :meth:`_EnvSpec.of` checked:
    ``env.unwrapped``, or a ``SyncVectorEnv``'s sub-envs."""
    base = env.unwrapped
    if isinstance(base, gym.vector.SyncVectorEnv):
        return _SyncCompact(base)
    return cast(CompactStateEnv, base)


def _single_base(env: Any) -> Any:
    """The one env whose attributes (``candidate_shape``, ``compact_state``) speak for ``env``:
    ``env.unwrapped``, or a ``SyncVectorEnv``'s first sub-env."""
    base = env.unwrapped
    if isinstance(base, gym.vector.SyncVectorEnv):
        return base.envs[0].unwrapped
    return base


@dataclass(frozen=True)
class _EnvSpec:
    """What the networks and the replay buffer are built for; saved with the model."""

    obs_shape: tuple[int, ...]
    candidate_shape: tuple[int, int]
    # Length of the env's compact states in compact replay mode, None in raw mode.
    compact_size: int | None

    @classmethod
    def of(cls, env: gym.Env | gym.vector.VectorEnv, replay: str) -> _EnvSpec:
        """Read the spec from ``env`` (an env or a vector env); ``replay`` picks the replay mode
        ("auto" prefers compact).

        Raises:
            ValueError: ``env`` is no MiSiCAL env (it has no ``candidate_shape``), or its
                spaces do not fit.
        """
        if isinstance(env, gym.vector.VectorEnv):
            action_space, observation_space = env.single_action_space, env.single_observation_space
        else:
            action_space, observation_space = env.action_space, env.observation_space
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"DDQN needs a Discrete action space, got {action_space}")
        if not isinstance(observation_space, gym.spaces.Box):
            raise ValueError(f"DDQN needs a Box observation space, got {observation_space}")
        num_actions = int(action_space.n)
        obs_shape = tuple(int(d) for d in observation_space.shape)
        base = _single_base(env)
        shape = getattr(base, "candidate_shape", None)
        if shape is None:
            raise ValueError(
                f"DDQN trains on MiSiCAL envs, whose observation holds one row of features per "
                f"candidate (env.unwrapped.candidate_shape); {type(base).__name__} has none "
                "(vector envs: use vectorization_mode 'sync' or the native 'vector_entry_point')"
            )
        if len(shape) != 2 or shape[0] != num_actions or np.prod(shape) != np.prod(obs_shape):
            raise ValueError(
                f"DDQN scores one row of features per action: the observation {obs_shape} must "
                f"hold {num_actions} equal rows (env.unwrapped.candidate_shape = {shape})"
            )
        # A SyncVectorEnv's sub-envs hold the states; a native vector env batches them.
        source = base if isinstance(env.unwrapped, gym.vector.SyncVectorEnv) else env.unwrapped
        has_compact = all(
            callable(getattr(source, name, None))
            for name in ("compact_state", "observation_from_compact")
        )
        if replay == "compact" and not has_compact:
            raise ValueError(
                "replay='compact' needs env.unwrapped.compact_state() and "
                "observation_from_compact(); use replay='raw' for this env"
            )
        compact = replay == "compact" or (replay == "auto" and has_compact)
        compact_size = (
            int(np.asarray(_compact_env(env).compact_state()).shape[-1]) if compact else None
        )
        return cls(obs_shape, (int(shape[0]), int(shape[1])), compact_size)


class DDQN(Learner):
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

    config_class = DDQNConfig
    tb_log_name = "DDQN"
    # The episodes in progress as the replay sees them (:meth:`_forget_episode` clears both):
    # each sub-env's last stored state [N, ...], and its step held back until the next one.
    _last_stored: np.ndarray | None
    _pending: list[dict[str, Any] | None]
    # [N, K] valid actions at the current observations, read once per step.
    _masks: np.ndarray

    def __init__(
        self,
        env: gym.Env | gym.vector.VectorEnv | str,
        config: DDQNConfig | None = None,
        **hyperparams: Any,
    ) -> None:
        """Configure the agent and build its networks and replay buffer.

        Args:
            env: A MiSiCAL env: a ``Discrete(K)`` action space and an observation of one row of
                F features per action (``env.unwrapped.candidate_shape == (K, F)``); or a
                Gymnasium ``VectorEnv`` of them (``SyncVectorEnv`` or the native vector env);
                or an env id for ``gym.make``.
            config: The hyperparameters (default: :class:`DDQNConfig`'s defaults).
            **hyperparams: Fields of :class:`DDQNConfig` overriding ``config``, SB3-style
                (``DDQN(env, gamma=0.9)``).

        Raises:
            ValueError: If an argument is unknown or out of range, or the env does not fit
                (it is no MiSiCAL env, e.g. CartPole).
        """
        if isinstance(env, str):
            env = gym.make(env)
        self._build(DDQNConfig.with_overrides(config, hyperparams))
        c = self.config
        draws_goals = len(getattr(_single_base(env), "goal_targets", ())) > 0
        network = (
            {**c.policy_kwargs, **c.goal_policy_kwargs}
            if draws_goals and c.goal_policy_kwargs is not None
            else None
        )
        self._setup_model(_EnvSpec.of(env, c.replay), network)
        self.set_env(env)

    def _build(self, config: DDQNConfig) -> None:
        self.config = config
        super().__init__(
            config.seed, config.tensorboard_log, config.verbose, config.stats_window_size
        )
        self.device = resolve_device(config.device)

    # ------------------------------------------------------------------ networks and replay
    def _setup_model(self, spec: _EnvSpec, network: dict[str, Any] | None = None) -> None:
        """Build the networks, optimiser, replay buffer and counters for ``spec``; ``network``
        (default: the config's ``policy_kwargs``) are the Q-network's keywords."""
        c = self.config
        self._spec = spec
        num_actions, num_features = spec.candidate_shape
        # Seed only the initialisation, leaving torch's global generator as it was.
        with torch.random.fork_rng(devices=[]):
            if c.seed is not None:
                torch.manual_seed(c.seed)
            kwargs = c.policy_kwargs if network is None else network
            self.q_net = DeepSetQNetwork(num_features, **kwargs).to(self.device)
        self.q_net_target = copy.deepcopy(self.q_net).requires_grad_(False)
        # Acting's mirror of the online network; its arrays are views of the parameters.
        self._numpy_q = NumpyQNetwork(self.q_net) if self.device.type == "cpu" else None
        # Listed once: every update walks them three times (clip, Adam, Polyak), and walking a
        # module tree costs more than the lerps themselves. load_state_dict keeps the tensors.
        self._params: list[torch.Tensor] = list(self.q_net.parameters())
        self._target_params: list[torch.Tensor] = list(self.q_net_target.parameters())
        # Fused: one kernel for all parameters, about a quarter of the per-tensor loop's time.
        self.optimizer = torch.optim.Adam(self._params, lr=c.learning_rate, fused=True)
        compact = spec.compact_size is not None
        self.replay_buffer = NStepPrioritizedReplayBuffer(
            c.buffer_size,
            spec.obs_shape if spec.compact_size is None else (spec.compact_size,),
            num_actions,
            n_step=c.n_step,
            gamma=c.gamma,
            alpha=c.per_alpha,
            eps=c.per_eps,
            obs_dtype=np.int64 if compact else np.float32,
        )
        self._rng = np.random.default_rng(c.seed)
        self.state = TrainingState(exploration_rate=c.exploration_initial_eps)
        # An observation and its compact state, checked against every env the replay meets.
        self._compact_probe: tuple[np.ndarray, np.ndarray] | None = None
        self._train_stats = {"loss": 0.0, "q": 0.0, "updates": 0}
        self._per_beta = c.per_beta0
        self._device_observations: DeviceObservations | None = None  # set_env builds it
        self._forget_episode()

    @property
    def candidate_shape(self) -> tuple[int, int]:
        """``(K, F)``: candidates per observation and features per candidate it was built for."""
        return self._spec.candidate_shape

    def set_env(self, env: gym.Env | gym.vector.VectorEnv | str) -> None:
        """Train on ``env`` (an env or a vector env) from now on; it must match the model's
        observation and actions.

        The episodes in progress are abandoned: their last steps enter the replay as truncated,
        and the next :meth:`learn` resets ``env``. As in SB3, only the env the model was built with
        is seeded by ``seed``: call ``env.reset(seed=...)`` first for a run that repeats.

        Raises:
            ValueError: If the env's spaces differ, or (compact replay) it rebuilds different
                observations from the replay's store ids, i.e. it reads another feature store.
        """
        if isinstance(env, str):
            env = gym.make(env)
        if not isinstance(env, gym.Env | gym.vector.VectorEnv):
            raise ValueError(
                f"DDQN trains on a gymnasium.Env or gymnasium.vector.VectorEnv, got "
                f"{type(env).__name__}; pass the Gymnasium env, not an SB3 VecEnv"
            )
        spec = _EnvSpec.of(env, "compact" if self._spec.compact_size is not None else "raw")
        if spec != self._spec:
            raise ValueError(f"env does not match the model: model {self._spec}, env {spec}")
        if self._compact_probe is not None:
            self._check_compact(env, *self._compact_probe)
        super().set_env(env)
        self._device_observations = self._on_device(env)
        action_masks = getattr(env.unwrapped, "action_masks", None)
        self._action_masks = action_masks if callable(action_masks) else None
        self._all_valid = np.ones((self.num_envs, self.candidate_shape[0]), dtype=bool)

    def _on_device(self, env: gym.Env | gym.vector.VectorEnv) -> DeviceObservations | None:
        """The rebuild of ``features_on_device`` for ``env``'s store; None when it is off.

        Raises:
            ValueError: It is on, but replay is raw or the env has no MiSiCAL feature store.
        """
        if not self.config.features_on_device:
            return None
        if self._spec.compact_size is None:
            raise ValueError("features_on_device needs compact replay (store ids to rebuild from)")
        base = _single_base(env)
        if getattr(base, "builder", None) is None:
            raise ValueError(
                f"features_on_device needs a MiSiCAL env's feature store (env.unwrapped.builder); "
                f"{type(base).__name__} has none"
            )
        return DeviceObservations(base, self.device)

    @staticmethod
    def _check_compact(
        env: gym.Env | gym.vector.VectorEnv, compact: np.ndarray, obs: np.ndarray
    ) -> None:
        rebuilt = _compact_env(env).observation_from_compact(compact)
        if not np.array_equal(rebuilt, obs):
            raise ValueError(
                "compact replay: this env's observation_from_compact(compact_state()) differs "
                "from its observation (another feature store, or a wrapper that changes "
                "observations); use replay='raw' or the env the replay was filled from"
            )

    # ------------------------------------------------------------------ acting
    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Q-values ``[B, K]`` of candidate rows ``[B, K, F]``."""
        rows = np.asarray(rows, dtype=np.float32)
        # The slot weights in NumPy: on one env's rows its few ops cost less than torch's.
        weights = mean_weights_numpy(rows)
        # A few rows (one env's: about 15 against 40 us) in NumPy, larger batches in torch.
        if self._numpy_q is not None and rows.shape[0] * rows.shape[1] <= self._numpy_q.max_rows:
            return self._numpy_q(rows, weights)
        with torch.inference_mode():
            q = self.q_net(
                torch.as_tensor(rows, device=self.device),
                torch.as_tensor(weights, device=self.device),
            )
            return q.cpu().numpy()

    @property
    def tie_break_rng(self) -> None:
        """Exact ties of Q-values go to the lowest slot."""
        return None

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

    def _random_action(self, mask: np.ndarray) -> np.int64:
        valid = np.flatnonzero(mask)
        # valid[integers(size)] draws what choice(valid) does, without choice's argument checks.
        if valid.size:
            return valid[self._rng.integers(valid.size)]
        return self._rng.integers(mask.size)

    def _act(self, obs: np.ndarray, progress: float) -> np.ndarray:
        """Uniform random before ``learning_starts``, then ε-greedy; valid actions only.

        One forward pass scores the sub-envs that act greedily. Sub-envs about to autoreset
        ignore their action and draw nothing, so a vector env of one draws what a single env
        does.
        """
        self.exploration_rate = self._exploration_schedule(progress)
        masks = self._masks
        actions = np.zeros(len(obs), dtype=np.int64)
        acting = np.flatnonzero(~self._starting)
        if self.num_timesteps >= self.config.learning_starts:
            exploring = self._rng.random(acting.size) < self.exploration_rate
            greedy, explore = acting[~exploring], acting[exploring]
        else:
            greedy, explore = acting[:0], acting
        if greedy.size:
            rows = obs[greedy].reshape(greedy.size, -1, self.candidate_shape[1])
            actions[greedy] = masked_argmax(self.scores(rows), masks[greedy])
        for e in explore.tolist():
            actions[e] = self._random_action(masks[e])
        return actions

    def _exploration_schedule(self, progress: float) -> float:
        """ε falls linearly from the initial to the final value over ``exploration_fraction``."""
        c = self.config
        fraction = min(progress / c.exploration_fraction, 1.0)
        return c.exploration_initial_eps + fraction * (
            c.exploration_final_eps - c.exploration_initial_eps
        )

    def _current_masks(self) -> np.ndarray:
        """``[N, K]`` valid actions now: a vector env's ``info["action_mask"]`` (both kinds
        batch it), a single env's ``action_masks()``, else every slot."""
        if self.is_vector:
            masks = self._last_info.get("action_mask")
            return self._all_valid if masks is None else np.asarray(masks, dtype=bool)
        if self._action_masks is None:
            return self._all_valid
        return np.asarray(self._action_masks(), dtype=bool)[None]

    # ------------------------------------------------------------------ the replay step
    def _on_reset(self, obs: np.ndarray) -> None:
        self._last_stored = self._replay_states(obs)
        self._masks = self._current_masks()
        if self._spec.compact_size is not None and self._compact_probe is None:
            assert self.env is not None
            probe = (self._last_stored[0].copy(), obs[0].copy())
            self._check_compact(self.env, *probe)
            self._compact_probe = probe

    def _replay_states(self, obs: np.ndarray) -> np.ndarray:
        """What the replay keeps of each sub-env's current state, ``[N, ...]``: ids (compact)
        or the observation."""
        if self._spec.compact_size is not None:
            assert self.env is not None
            compact = _compact_env(self.env).compact_state()
            return np.array(compact, dtype=np.int64).reshape(self.num_envs, -1)
        return np.array(obs, dtype=np.float32)

    def _on_transition(
        self,
        actions: np.ndarray,
        rewards: np.ndarray,
        new_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        starting: np.ndarray,
        progress: float,
    ) -> None:
        """Per sub-env, hand its previous step to the replay (its own n-step stream) and hold
        this one back unless it ends the episode; an autoreset only starts the next episode.

        A step is held back because the replay can close an episode only through a step: if the
        episode is abandoned (new env, resumed run, reset), the held step closes it as truncated.
        """
        assert self._last_stored is not None
        stored = self._replay_states(new_obs)
        masks = self._current_masks()
        add, pending = self.replay_buffer.add, self._pending
        for e in np.flatnonzero(~starting).tolist():
            held = pending[e]
            if held is not None:
                add(**held, terminated=False, truncated=False, stream=e)
            step: dict[str, Any] = {
                "obs": self._last_stored[e],
                "action": int(actions[e]),
                "reward": float(rewards[e]),
                "next_obs": stored[e],
                "next_action_mask": masks[e],
            }
            if terminated[e] or truncated[e]:
                add(**step, terminated=bool(terminated[e]), truncated=bool(truncated[e]), stream=e)
                pending[e] = None
            else:
                pending[e] = step
        self._last_stored = stored
        self._masks = masks  # the next _act's

    def _abandon_episode(self) -> None:
        for e, held in enumerate(self._pending):
            if held is not None:
                self.replay_buffer.add(**held, terminated=False, truncated=True, stream=e)
        super()._abandon_episode()

    def _forget_episode(self) -> None:
        super()._forget_episode()
        self._last_stored = None
        self._pending = [None] * self.num_envs

    # ------------------------------------------------------------------ the update
    def _on_step_taken(self, callback: BaseCallback, progress: float) -> None:
        """Train every ``train_freq`` steps after ``learning_starts``; hard target copies."""
        c = self.config
        # The multiples of train_freq this step passed (N env steps on a vector env).
        now, before = self.num_timesteps, self.num_timesteps - self.num_envs
        rounds = now // c.train_freq - max(before, c.learning_starts) // c.train_freq
        if now > c.learning_starts and rounds > 0 and len(self.replay_buffer) > 0:
            callback.on_rollout_end()
            steps = rounds * (c.train_freq if c.gradient_steps == -1 else c.gradient_steps)
            beta = c.per_beta0 + (1.0 - c.per_beta0) * progress
            for _ in range(steps):
                self._train_step(beta)
            callback.on_rollout_start()
        interval = c.target_update_interval
        if c.target_update == "hard" and now // interval > before // interval:
            self.q_net_target.load_state_dict(self.q_net.state_dict())

    def _train_step(self, beta: float) -> None:
        """Double DQN on a prioritized batch: Huber loss weighted by IS weights, |TD| priorities.

        With ``counterfactual_targets`` each sample's loss is the mean over its valid candidates
        (see :class:`DDQNConfig`); the priority stays the taken action's |TD error|, the one
        quantity that is exact for every sample.
        """
        c = self.config
        batch = self.replay_buffer.sample(c.batch_size, beta, self._rng)
        oracle = self._reward_oracle()
        if oracle is not None and c.hindsight_fraction > 0 and oracle.goal_targets.size:
            batch = self._relabel(batch, oracle)
        rewards = None
        if oracle is not None and c.counterfactual_targets:
            rewards = oracle.candidate_rewards(batch.obs, shown=True)
        obs, obs_weights, next_obs, next_weights, next_invalid, actions, floats = self._to_tensors(
            batch
        )
        returns, discounts, weights = floats
        # Inference mode, not no_grad: a tenth less for these passes (no version counters or
        # view tracking); what leaves it is never saved for backward.
        with torch.inference_mode():
            # Not one online pass over [s, s']: its backward would run over both halves.
            next_q_online = self.q_net(next_obs, next_weights).masked_fill(next_invalid, -torch.inf)
            next_actions = next_q_online.argmax(dim=1)
            if self.q_net_target.value is None:  # the target scores only the chosen slots
                next_q = self.q_net_target(next_obs, next_weights, slots=next_actions)
            else:
                next_q = self.q_net_target(next_obs, next_weights).gather(
                    1, next_actions.unsqueeze(1)
                )[:, 0]
        targets = returns + discounts * next_q
        q_all = self.q_net(obs, obs_weights)
        q = q_all.gather(1, actions.unsqueeze(1)).squeeze(1)
        if rewards is None:
            per_sample = F.smooth_l1_loss(q, targets, reduction="none")
        else:
            all_targets, share = self._counterfactual(rewards, batch.actions, targets)
            losses = F.smooth_l1_loss(q_all, all_targets, reduction="none")
            per_sample = (losses * share).sum(dim=1)
        loss = (weights * per_sample).mean()

        for parameter in self._params:  # zero_grad(set_to_none=True) without its dispatch
            parameter.grad = None
        loss.backward()
        self._clip_gradients(c.max_grad_norm)
        self._adam_step()
        self.replay_buffer.update_priorities(batch.indices, (q - targets).detach().cpu().numpy())
        if c.target_update == "soft":
            with torch.no_grad():  # one call for every tensor: the same lerp, one dispatch
                torch._foreach_lerp_(self._target_params, self._params, c.tau)

        self.state.n_updates += 1
        stats = self._train_stats
        stats["loss"] += loss.item()
        stats["q"] += q.detach().mean().item()
        stats["updates"] += 1
        self._per_beta = beta

    def _clip_gradients(self, max_norm: float) -> None:
        """``clip_grad_norm_(self._params, max_norm, foreach=True)``'s ops, bit for bit, without
        its grouping of the tensors by device and dtype (one network: one group), which took
        about 40% of its time."""
        grads = [p.grad for p in self._params if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))

    def _adam_step(self) -> None:
        """``self.optimizer.step()`` bit for bit: the step count and the fused kernel it calls,
        without torch.optim's per-call bookkeeping (hooks, profiler records, regrouping the
        tensors), which took about 200 us of a 3 ms update on the CPU."""
        state, group = self.optimizer.state, self.optimizer.param_groups[0]
        special = group["amsgrad"] or group.get("decoupled_weight_decay", False)
        grads = [p.grad for p in self._params if p.grad is not None]
        if not state or special or len(grads) < len(self._params):
            self.optimizer.step()  # the first step creates the state; the rare cases as torch
            return
        moments = [state[p] for p in self._params]
        steps = [m["step"] for m in moments]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            self._params,
            grads,
            [m["exp_avg"] for m in moments],
            [m["exp_avg_sq"] for m in moments],
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            grad_scale=None,
            found_inf=None,
        )

    def _reward_oracle(self) -> RewardOracleEnv | None:
        """The env, if replay is compact and it reports candidates' rewards; else None."""
        if self._spec.compact_size is None or self.env is None:
            return None
        # Every sub-env of a vector env reads the same store with the same reward function.
        base = _single_base(self.env)
        if not callable(getattr(base, "candidate_rewards", None)):
            return None
        return cast(RewardOracleEnv, base)

    def _counterfactual(
        self, rewards: np.ndarray, actions: np.ndarray, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every candidate's target and its share of its sample's loss.

        Args:
            rewards: ``[B, K]`` immediate rewards of the candidates (NaN: unknown or empty).
            actions: ``[B]`` taken actions.
            targets: ``[B]`` the taken actions' n-step targets.

        Returns:
            ``[B, K]`` targets ``targets + r(a_i) - r(a_taken)`` and ``[B, K]`` shares: 1 / the
            number of valid candidates on those, 0 elsewhere. A sample whose taken reward is
            unknown puts its whole share on the taken action with the plain target.
        """
        rows = np.arange(len(actions))
        taken = rewards[rows, actions]
        known = np.isfinite(rewards) & np.isfinite(taken)[:, None]
        known[rows, actions] = True  # the taken action always learns
        shift = np.where(known, rewards - taken[:, None], 0.0)
        shift[~np.isfinite(shift)] = 0.0  # taken reward unknown: the plain target
        share = known / known.sum(axis=1, keepdims=True)

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array, dtype=torch.float32, device=self.device)

        return targets.unsqueeze(1) + tensor(shift), tensor(share)

    def _relabel(self, batch: ReplaySample, env: RewardOracleEnv) -> ReplaySample:
        """Hindsight relabelling: a ``hindsight_fraction`` of ``batch`` with another target.

        The candidates an episode draws do not depend on its target, so a stored trajectory is
        also one of every other target's: only the rewards change. A relabelled sample's target
        is drawn among the goal targets whose rewards differ between its shown candidates (the
        targets it can teach something about; a sampling choice, which changes what is
        emphasised, not the fixed point), and its n-step return is recomputed from the picked
        patches of its whole window, so the n-step target stays exact. A sample whose window
        holds a patch of unknown counts, or with no such target, keeps its own.
        """
        k = self.candidate_shape[0]
        draws = self._rng.random(len(batch.indices))
        chosen = np.flatnonzero(draws < self.config.hindsight_fraction)
        if chosen.size == 0:
            return batch
        goals = env.goal_targets
        states = batch.obs[chosen]
        by_goal = env.candidate_rewards(
            np.broadcast_to(states[:, None], (chosen.size, goals.size, states.shape[-1])),
            goals[None, :],
            shown=True,
        )  # [P, T, K]
        unknown = np.isnan(by_goal)
        highest = np.where(unknown, -np.inf, by_goal).max(axis=2)
        spread = highest > np.where(unknown, np.inf, by_goal).min(axis=2)  # [P, T]
        # A uniform draw among each sample's informative goals.
        scores = np.where(spread, self._rng.random(spread.shape), -1.0)
        pick = scores.argmax(axis=1)
        new_target = goals[pick]
        window_obs, window_actions, lengths = self.replay_buffer.windows(batch.indices[chosen])
        picked = np.take_along_axis(
            env.candidate_rewards(window_obs, new_target[:, None]), window_actions[..., None], 2
        )[..., 0]  # [P, n]
        inside = np.arange(window_actions.shape[1]) < lengths[:, None]
        discounted = np.where(inside, picked * self.config.gamma ** np.arange(picked.shape[1]), 0)
        ok = spread.any(axis=1) & np.isfinite(np.where(inside, picked, 0.0)).all(axis=1)
        rows = chosen[ok]
        obs, next_obs, returns = batch.obs.copy(), batch.next_obs.copy(), batch.returns.copy()
        obs[rows, k] = next_obs[rows, k] = new_target[ok]
        returns[rows] = discounted[ok].sum(axis=1)
        return batch._replace(obs=obs, next_obs=next_obs, returns=returns)

    def _to_tensors(self, batch: ReplaySample) -> tuple[torch.Tensor, ...]:
        """The batch on the device, with observations rebuilt in compact mode.

        Returns:
            ``obs``, its slot weights (:meth:`DeepSetQNetwork.mean_weights`), ``next_obs``, its
            slot weights, ``[B, K]`` the invalid actions at ``next_obs``, ``[B]`` actions and
            ``[3, B]`` returns, discounts and IS weights.
        """
        size = len(batch.obs)

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), device=self.device)

        # The small arrays are prepared in NumPy and cross in as few conversions as they can:
        # on CPU each torch op on a [64]-sized tensor costs several times NumPy's.
        # The slot weights once for both halves, where the rows are: NumPy's (a product with
        # ones) beat torch's reduction 2x on CPU, and on a GPU the rows never leave it.
        if self._device_observations is not None:
            assert self._spec.compact_size is not None
            both = self._device_observations(np.concatenate([batch.obs, batch.next_obs]))
            both = both.view(2 * size, *self.candidate_shape)
            weights = self.q_net.mean_weights(both)
        else:
            if self._spec.compact_size is None:
                rows = np.concatenate([batch.obs, batch.next_obs]).astype(np.float32, copy=False)
            else:
                assert self.env is not None
                # One rebuild for both halves: the store gather is the same call.
                states = np.concatenate([batch.obs, batch.next_obs])
                rows = _compact_env(self.env).observation_from_compact(states)
            rows = rows.reshape(2 * size, *self.candidate_shape)
            both, weights = tensor(rows), tensor(mean_weights_numpy(rows))
        floats = np.stack([batch.returns, batch.discounts, batch.weights]).astype(np.float32)
        return (
            both[:size],
            weights[:size],
            both[size:],
            weights[size:],
            tensor(~valid_or_all(batch.next_action_masks)),
            tensor(batch.actions.astype(np.int64)),
            tensor(floats),
        )

    # ------------------------------------------------------------------ logs
    def _setup_learn(
        self, total_timesteps: int, reset_num_timesteps: bool, tb_log_name: str
    ) -> None:
        if reset_num_timesteps:
            self._train_stats = {"loss": 0.0, "q": 0.0, "updates": 0}
        super()._setup_learn(total_timesteps, reset_num_timesteps, tb_log_name)

    def _end_episode(self, episode: dict[str, Any], log_interval: int) -> None:
        """Record the finished episode, log, and checkpoint every ``checkpoint_freq`` steps."""
        super()._end_episode(episode, log_interval)
        c = self.config
        if (
            c.checkpoint_freq
            and self.num_timesteps - self.state.last_checkpoint >= c.checkpoint_freq
        ):
            assert c.checkpoint_path is not None
            self.state.last_checkpoint = self.num_timesteps
            self.save(c.checkpoint_path, include_replay_buffer=True)

    def _record_extra(self) -> None:
        record = self.logger.record
        record("rollout/exploration_rate", self.exploration_rate)
        stats = self._train_stats
        if stats["updates"]:
            record("train/learning_rate", self.config.learning_rate)
            record("train/loss", stats["loss"] / stats["updates"])
            record("train/q_mean", stats["q"] / stats["updates"])
            record("train/per_beta", self._per_beta)
            record("train/n_updates", self.state.n_updates)
            self._train_stats = {"loss": 0.0, "q": 0.0, "updates": 0}

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike[str], include_replay_buffer: bool = False) -> Path:
        """Write the model (networks, optimiser, counters, RNG states) to one file, atomically.

        The file holds tensors and plain data only and is read with ``weights_only=True``, so
        loading it runs no code.

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
        # A vector env's sub-envs have generators of their own: a resumed vector run reseeds.
        env_rng = (
            None
            if self.env is None or self.is_vector
            else self.env.unwrapped.np_random.bit_generator.state
        )
        state = {
            "version": _CHECKPOINT_VERSION,
            "config": asdict(self.config),
            "spec": asdict(self._spec),
            "network": self.q_net.arch,
            "q_net": self.q_net.state_dict(),
            "q_net_target": self.q_net_target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "training_state": asdict(self.state),
            "per_beta": self._per_beta,
            "train_stats": dict(self._train_stats),  # since the last log write
            "rng": self._rng.bit_generator.state,
            "env_rng": env_rng,
            "compact_probe": _to_tensors(self._compact_probe),
            "episode_window": {key: list(self._episode_window[key]) for key in EPISODE_KEYS},
            # The held-back step belongs to the replay: without the replay it is dropped.
            "replay": _to_tensors(self.replay_buffer.state_dict())
            if include_replay_buffer
            else None,
            "pending": _to_tensors(self._pending) if include_replay_buffer else None,
        }
        with atomic_path(path) as tmp:  # a run killed while saving keeps the previous file
            torch.save(state, tmp)
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        env: gym.Env | str | None = None,
        device: str | torch.device = "auto",
    ) -> DDQN:
        """Load a model written by :meth:`save` (tensors and plain data; no code runs).

        Args:
            path: The file (``.zip`` is tried when ``path`` has no suffix and does not exist).
            env: The env to train or act in; needed for :meth:`learn` and for compact replay.
                Its random state is restored, so a resumed run continues as the original would.
            device: Where to put the networks.

        Returns:
            The model, ready to ``predict`` or to ``learn(..., reset_num_timesteps=False)``.

        Raises:
            ValueError: The file is not a DDQN checkpoint of this version.
        """
        path = Path(path)
        if not path.exists() and not path.suffix:
            path = path.with_suffix(".zip")
        state = _read_checkpoint(path)
        model = cls.__new__(cls)
        config = DDQNConfig(**state["config"])
        model._build(dataclasses.replace(config, device=str(device)))
        spec = state["spec"]
        model._setup_model(
            _EnvSpec(
                tuple(spec["obs_shape"]), tuple(spec["candidate_shape"]), spec["compact_size"]
            ),
            _saved_network(state, config, path),
        )
        model.q_net.load_state_dict(state["q_net"])
        model.q_net_target.load_state_dict(state["q_net_target"])
        model.optimizer.load_state_dict(state["optimizer"])
        model.state = TrainingState(**state["training_state"])
        model._per_beta = state["per_beta"]
        model._train_stats = dict(state["train_stats"])
        model._rng.bit_generator.state = state["rng"]
        model._compact_probe = _to_arrays(state["compact_probe"])
        for key in EPISODE_KEYS:
            model._episode_window[key].extend(state["episode_window"][key])
        if state["replay"] is not None:
            model.replay_buffer.load_state_dict(_to_arrays(state["replay"]))
            model._pending = _pending_steps(state["pending"])
        if env is not None:
            model.set_env(env)
            if state["env_rng"] is not None and not model.is_vector:
                assert model.env is not None  # set just above
                bit_generator = np.random.PCG64()
                bit_generator.state = state["env_rng"]
                model.env.unwrapped.np_random = np.random.Generator(bit_generator)
        return model

    @staticmethod
    def checkpoint_timesteps(path: str | os.PathLike[str]) -> int:
        """The env steps a checkpoint written by :meth:`save` had taken."""
        return int(_read_checkpoint(Path(path))["training_state"]["num_timesteps"])

    def save_replay_buffer(self, path: str | os.PathLike[str]) -> None:
        """Write the replay buffer alone, atomically (SB3's
        ``CheckpointCallback(save_replay_buffer=True)``)."""
        state = {
            "replay": _to_tensors(self.replay_buffer.state_dict()),
            "pending": _to_tensors(self._pending),
        }
        with atomic_path(Path(path)) as tmp:
            torch.save(state, tmp)

    def load_replay_buffer(self, path: str | os.PathLike[str]) -> None:
        """Restore a replay buffer written by :meth:`save_replay_buffer` (no code runs)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.replay_buffer.load_state_dict(_to_arrays(state["replay"]))
        self._pending = _pending_steps(state["pending"])


def _pending_steps(saved: Any) -> list[dict[str, Any] | None]:
    """The held-back steps of a checkpoint, one per sub-env (a single env's: one, or None)."""
    steps = _to_arrays(saved)
    return steps if isinstance(steps, list) else [steps]


def _saved_network(state: dict[str, Any], config: DDQNConfig, path: Path) -> dict[str, Any]:
    """The Q-network's keywords a checkpoint was trained with, checked: read as data."""
    network = state.get("network")
    if network is None:  # written before checkpoints named their network
        return {**_FORMER_NETWORK, **config.policy_kwargs}

    def widths(key: str) -> bool:
        value = network[key]
        return (
            isinstance(value, list)
            and len(value) <= MAX_LAYERS
            and all(type(w) is int and 1 <= w <= MAX_WIDTH for w in value)
        )

    if not (
        isinstance(network, dict)
        and set(network) == set(POLICY_KWARGS)
        and widths("phi_arch")
        and widths("rho_arch")
        and len(network["phi_arch"]) > 0
        and isinstance(network["dueling"], bool)
    ):
        raise ValueError(f"{path} is not a DDQN checkpoint: its network entry is malformed")
    return dict(network)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, read as data: any pickled object in it is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError... for foreign files
        raise ValueError(
            f"{path} is not a DDQN checkpoint of version {_CHECKPOINT_VERSION} (read as data "
            f"only; files from before version 2 were pickles and must be trained again): {exc}"
        ) from None
    if not isinstance(state, dict) or state.get("version") != _CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a DDQN checkpoint of version {_CHECKPOINT_VERSION}")
    return state


def _to_tensors(value: Any) -> Any:
    """``value`` with every NumPy array made a tensor, so ``weights_only`` can read it back."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _to_tensors(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_tensors(item) for item in value)
    return value


def _to_arrays(value: Any) -> Any:
    """The inverse of :func:`_to_tensors`."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {key: _to_arrays(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_arrays(item) for item in value)
    return value
