"""The shell every learner of the package shares: SB3's interface around one learn loop.

:class:`Learner` holds what is not the algorithm: the env (wrapped once in
:class:`~misical_gym.envs.wrappers.RecordSelectionStatistics`), the SB3 logger and callbacks,
the counters of :class:`TrainingState`, the window of finished episodes read from
``info["episode"]``, and the loop of :meth:`Learner.learn`. A subclass says how it acts
(:meth:`Learner._act`), what it does with a transition (:meth:`Learner._on_transition`) and what
it logs beyond the shared keys (:meth:`Learner._record_extra`). The DDQN and the rollout
learners (heuristics, the supervised ablation) are the two subclasses.

The loop is batched: it acts in N sub-envs at once, N = 1 for a plain ``gym.Env`` and
``num_envs`` for a Gymnasium ``VectorEnv`` in its ``NEXT_STEP`` autoreset mode (``SyncVectorEnv``,
``AsyncVectorEnv``, the native MiSiCAL vector env). ``num_timesteps`` counts env steps, N per
vector step, as SB3 does. A single env is reset by the loop when its episode ends; a vector env
resets a sub-env itself at the step after its end, and that step (the first observation of the
next episode, reward 0) is no transition: the subclass sees it as a start, not a step.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger
from tqdm.auto import tqdm

from misical_gym.agents.logger import run_logger
from misical_gym.envs.wrappers import with_statistics

Env = gym.Env | gym.vector.VectorEnv

Callback = (
    BaseCallback
    | Callable[[dict[str, Any], dict[str, Any]], bool | None]
    | list[BaseCallback]
    | None
)

EPISODE_KEYS: tuple[str, ...] = ("r", "l", "target_pixels", "hits")
"""What the learners keep of each ``info["episode"]`` for their logs and checkpoints."""


@dataclass
class TrainingState:
    """The counters a learner carries across ``learn`` calls; saved whole in checkpoints."""

    num_timesteps: int = 0
    """Env steps taken (SB3's ``num_timesteps``)."""
    episode_num: int = 0
    """Episodes finished."""
    n_updates: int = 0
    """Gradient steps taken."""
    last_checkpoint: int = 0
    """``num_timesteps`` at the last periodic checkpoint."""
    env_seeded: bool = False
    """Whether the training env has had its seeded first reset."""
    exploration_rate: float = 0.0
    """The current ε of ε-greedy exploration (0 for learners that do not explore)."""


class _FunctionCallback(BaseCallback):
    """A plain ``callback(locals_, globals_)``; training stops only when it returns False."""

    def __init__(self, function: Callable[[dict[str, Any], dict[str, Any]], bool | None]) -> None:
        super().__init__()
        self.function = function

    def _on_step(self) -> bool:
        return self.function(self.locals, self.globals) is not False


class Learner:
    """SB3's ``learn``/``set_env``/``logger`` shell around one env-step loop.

    Args:
        seed: Seeds the learner's generator and its env's first reset.
        tensorboard_log: Directory of TensorBoard runs (``<tb_log_name>_<n>``, as SB3).
        verbose: 1 also prints the logs to stdout.
        stats_window_size: Episodes averaged in the ``rollout/`` and ``al/`` logs.
    """

    tb_log_name: ClassVar[str] = "run"
    """The default TensorBoard run name of :meth:`learn` (SB3 uses the algorithm's name)."""
    continues_episodes: ClassVar[bool] = True
    """True: an episode in progress and the statistics window carry over from one ``learn``
    call to the next (SB3's off-policy algorithms). False: every call starts a fresh episode,
    seeded with ``seed`` plus the episodes finished so far, and a fresh window."""

    def __init__(
        self,
        seed: int | None,
        tensorboard_log: str | None,
        verbose: int,
        stats_window_size: int = 100,
    ) -> None:
        self.seed = seed
        self.tensorboard_log = tensorboard_log
        self.verbose = verbose
        self.stats_window_size = stats_window_size
        self.state = TrainingState()
        self.env: Any = None
        self.num_envs = 1
        self._logger: Logger | None = None
        # The batch [N, *obs_shape] of the sub-envs' current observations (None: reset first),
        # the last info, and the sub-envs whose next step is Gymnasium's autoreset.
        self._last_obs: np.ndarray | None = None
        self._last_info: dict[str, Any] = {}
        self._starting = np.zeros(1, dtype=bool)
        self._reset_seed: int | None = None
        self._reset_episode_window()

    # ------------------------------------------------------------------ SB3's attributes
    @property
    def num_timesteps(self) -> int:
        return self.state.num_timesteps

    @num_timesteps.setter
    def num_timesteps(self, value: int) -> None:
        self.state.num_timesteps = value

    @property
    def exploration_rate(self) -> float:
        return self.state.exploration_rate

    @exploration_rate.setter
    def exploration_rate(self, value: float) -> None:
        self.state.exploration_rate = value

    @property
    def logger(self) -> Logger:
        """The SB3 logger of the current :meth:`learn` call (callbacks record through it)."""
        if self._logger is None:
            self._logger = run_logger(self.verbose)
        return self._logger

    def get_env(self) -> Any:
        """The training env: a Gymnasium env or ``VectorEnv`` (not an SB3 VecEnv)."""
        return self.env

    def set_env(self, env: Env) -> None:
        """Train on ``env`` (an env or a vector env) from now on; the episodes in progress are
        abandoned."""
        self._abandon_episode()
        self.env = with_statistics(env)
        self.num_envs = env.num_envs if isinstance(env, gym.vector.VectorEnv) else 1
        self._starting = np.zeros(self.num_envs, dtype=bool)
        self._forget_episode()  # sized for the new env

    @property
    def is_vector(self) -> bool:
        """Whether the training env is a Gymnasium ``VectorEnv``."""
        return isinstance(self.env, gym.vector.VectorEnv)

    # ------------------------------------------------------------------ the loop
    def learn(
        self,
        total_timesteps: int,
        callback: Callback = None,
        log_interval: int = 4,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> Learner:
        """Take ``total_timesteps`` env steps, learning as the subclass does.

        Args:
            total_timesteps: Env steps to take in this call.
            callback: An SB3 ``BaseCallback``, a list of them, or a plain
                ``callback(locals_, globals_)`` that returns False to stop.
            log_interval: Episodes between log writes.
            tb_log_name: TensorBoard run name (default: :attr:`tb_log_name`); runs go to
                ``<tensorboard_log>/<name>_<n>``.
            reset_num_timesteps: Start counting (and the schedules, and a new TensorBoard run)
                from zero; False continues the previous run, e.g. after ``load``.
            progress_bar: Show a tqdm progress bar.

        Returns:
            The learner itself.
        """
        if self.env is None:
            raise ValueError("the model has no env: pass env= to load or call set_env()")
        tb_log_name = tb_log_name or self.tb_log_name
        self._setup_learn(total_timesteps, reset_num_timesteps, tb_log_name)
        callback = self._init_callback(callback)
        callback.on_training_start(locals(), globals())
        bar = tqdm(total=total_timesteps, disable=not progress_bar, unit="step", desc=tb_log_name)
        callback.on_rollout_start()
        n = self.num_envs
        while self.num_timesteps < self._total_timesteps:
            if self._last_obs is None:
                self._reset_env()
            assert self._last_obs is not None
            progress = self.num_timesteps / self._total_timesteps
            actions = self._act(self._last_obs, progress)
            new_obs, rewards, terminated, truncated, info = self._step_env(actions)
            self.num_timesteps += n
            bar.update(n)
            self._last_info = info  # the masks at new_obs, for the subclass
            starting = self._starting
            self._on_transition(
                actions, rewards, new_obs, terminated, truncated, starting, progress
            )
            self._on_step_taken(callback, progress)
            self._last_obs = new_obs
            dones = terminated | truncated
            callback.update_locals(
                {
                    "new_obs": new_obs,
                    "actions": actions,
                    "rewards": rewards,
                    "dones": dones,
                    "infos": _unbatched(info, n) if self.is_vector else [info],
                }
            )
            if not callback.on_step():
                break
            if dones.any():
                episodes = info["episode"]
                for e in np.flatnonzero(dones).tolist():
                    episode = _entry(episodes, e) if self.is_vector else episodes
                    self._end_episode(episode, log_interval)
                if not self.is_vector:
                    self._forget_episode()  # the loop resets a single env
            self._starting = dones
        bar.close()
        callback.on_rollout_end()
        callback.on_training_end()
        self._on_learn_end()
        return self

    def _setup_learn(
        self, total_timesteps: int, reset_num_timesteps: bool, tb_log_name: str
    ) -> None:
        """SB3's bookkeeping: counters, the schedules' horizon, the logger."""
        if total_timesteps < 0:
            raise ValueError(f"total_timesteps must be non-negative, got {total_timesteps}")
        self._start_time = time.time_ns()
        if reset_num_timesteps:
            self.num_timesteps = 0
            if self.continues_episodes:
                self.state.episode_num = 0
                self.state.last_checkpoint = 0
                self._reset_episode_window()
                self._abandon_episode()
        if not self.continues_episodes:
            self._reset_episode_window()
            self._abandon_episode()
            self._reset_seed = None if self.seed is None else self.seed + self.state.episode_num
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
        callback.init_callback(self)  # type: ignore[arg-type]
        return callback

    def _reset_env(self) -> None:
        """Start an episode in every sub-env; the first reset of the run is seeded."""
        assert self.env is not None
        self._abandon_episode()
        if self.continues_episodes:
            seed = None if self.state.env_seeded else self.seed
        else:
            seed, self._reset_seed = self._reset_seed, None
        obs, self._last_info = self.env.reset(seed=seed)
        self.state.env_seeded = True
        self._last_obs = self._batched(obs)
        self._starting = np.zeros(self.num_envs, dtype=bool)
        self._on_reset(self._last_obs)

    def _batched(self, obs: Any) -> np.ndarray:
        """``[N, *obs_shape]`` float32 observations of the env's (one or a batch)."""
        obs = np.asarray(obs, dtype=np.float32)
        return obs if self.is_vector else obs[None]

    def _step_env(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-env; everything as arrays of N, the info as the env returns it."""
        assert self.env is not None
        if self.is_vector:
            obs, rewards, terminated, truncated, info = self.env.step(actions)
            return (
                self._batched(obs),
                np.asarray(rewards, dtype=np.float64),
                np.asarray(terminated, dtype=bool),
                np.asarray(truncated, dtype=bool),
                info,
            )
        obs, reward, terminated, truncated, info = self.env.step(int(actions[0]))
        return (
            self._batched(obs),
            np.array([reward], dtype=np.float64),
            np.array([terminated]),
            np.array([truncated]),
            info,
        )

    def _end_episode(self, episode: dict[str, Any], log_interval: int) -> None:
        """Record the finished episode and log every ``log_interval`` episodes."""
        for key in EPISODE_KEYS:
            self._episode_window[key].append(episode[key])
        self.state.episode_num += 1
        if log_interval and self.state.episode_num % log_interval == 0:
            self._dump_logs()

    def _reset_episode_window(self) -> None:
        self._episode_window: dict[str, deque[Any]] = {
            key: deque(maxlen=self.stats_window_size) for key in EPISODE_KEYS
        }

    def _abandon_episode(self) -> None:
        """Drop the episode in progress (the env is reset at the next step)."""
        self._forget_episode()

    def _forget_episode(self) -> None:
        self._last_obs = None

    def _dump_logs(self) -> None:
        """Write SB3's keys plus the MiSiCAL ones, at x = ``num_timesteps``."""
        window = self._episode_window
        elapsed = max((time.time_ns() - self._start_time) / 1e9, sys.float_info.epsilon)
        record = self.logger.record
        record("rollout/ep_rew_mean", float(np.mean(window["r"])))
        record("rollout/ep_len_mean", float(np.mean(window["l"])))
        record("al/target_pixels", float(np.mean(window["target_pixels"])))
        record("al/hit_rate", sum(window["hits"]) / max(sum(window["l"]), 1))
        record("time/episodes", self.state.episode_num, exclude="tensorboard")
        record("time/fps", int((self.num_timesteps - self._num_timesteps_at_start) / elapsed))
        record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self._record_extra()
        self.logger.dump(step=self.num_timesteps)

    # ------------------------------------------------------------------ what subclasses define
    def _act(self, obs: np.ndarray, progress: float) -> np.ndarray:
        """The ``[N]`` actions to take in ``obs`` ``[N, *obs_shape]``; ``progress`` is the share
        of this call done."""
        raise NotImplementedError

    def _on_reset(self, obs: np.ndarray) -> None:
        """Called after every reset of the whole training env, with ``[N, *obs_shape]``."""

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
        """Called after every env step with ``[N]`` arrays; where ``starting`` is True the
        sub-env was autoreset: ``new_obs`` is its first observation, and no transition."""

    def _on_step_taken(self, callback: BaseCallback, progress: float) -> None:
        """Called after :meth:`_on_transition`, before the callbacks see the step (training)."""

    def _on_learn_end(self) -> None:
        """Called when :meth:`learn` ends."""

    def _record_extra(self) -> None:
        """Record the subclass's own keys before a log write."""


def _entry(batched: dict[str, Any], e: int) -> dict[str, Any]:
    """Sub-env ``e``'s values of a vector env's info dict (Python scalars where they are)."""
    return {
        key: value[e].item() if isinstance(value, np.ndarray) and value.ndim == 1 else value[e]
        for key, value in batched.items()
        if not key.startswith("_")
    }


def _unbatched(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """A vector env's info dict as SB3's list of one dict per sub-env: each key that the
    sub-env carries (Gymnasium's ``"_key"`` masks), nested dicts (``"episode"``) included."""
    infos: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if key.startswith("_"):
            continue
        present = info.get(f"_{key}")
        for e in range(n):
            if present is None or present[e]:
                infos[e][key] = _entry(value, e) if isinstance(value, dict) else value[e]
    return infos
