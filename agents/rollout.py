"""Shared by policies that do not learn by gradient steps (heuristics, the supervised ablation).

:class:`RolloutLearner` puts them on the learner shell: ``predict`` picks the highest-scoring
valid candidate, and ``learn`` rolls the policy out in its environment, logging the same
TensorBoard keys as the other agents (``rollout/*``, ``time/fps``, ``al/*``) so every agent's
curves overlay.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from misical_gym.agents.learner import Env, Learner
from misical_gym.agents.policy import greedy_actions
from misical_gym.envs.patch_selection import unwrap_misical


class RolloutLearner(Learner):
    """Base class: subclasses define :meth:`scores` and may extend :meth:`observe`.

    Every ``learn`` call is a fresh rollout: a new episode, seeded with ``seed`` plus the
    episodes finished so far, and a fresh statistics window.
    """

    continues_episodes: ClassVar[bool] = False

    def __init__(
        self,
        env: gym.Env,
        seed: int | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(seed, tensorboard_log, verbose)
        self.rng = np.random.default_rng(seed)
        _refuse_vector(env)
        base = unwrap_misical(env)
        self.candidate_shape: tuple[int, int] = base.candidate_shape
        self.feature_names: tuple[str, ...] = tuple(base.feature_names)
        super().set_env(env)

    # ------------------------------------------------------------------ acting
    def scores(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def tie_break_rng(self) -> np.random.Generator:
        return self.rng

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, None]:
        """The highest-scoring valid candidate of each observation (one or a batch); exact ties
        are broken at random."""
        return greedy_actions(self, observation, action_masks, self.tie_break_rng)[0], None

    def set_env(self, env: Env) -> None:
        shape = unwrap_misical(_refuse_vector(env)).candidate_shape
        if shape != self.candidate_shape:
            raise ValueError(
                f"the new env's candidate shape {shape} differs from {self.candidate_shape}"
            )
        super().set_env(env)

    # ------------------------------------------------------------------ learning
    def observe(
        self, rows: np.ndarray, candidate_ids: np.ndarray, action: int, target: int
    ) -> None:
        """Called at every step of :meth:`learn` with the rows and ids acted on."""

    def finish_learning(self) -> None:
        """Called at the end of :meth:`learn`; heuristics have nothing to fit."""

    def _act(self, obs: np.ndarray, progress: float) -> np.ndarray:
        assert self.env is not None
        action, _ = self.predict(obs[0], action_masks=unwrap_misical(self.env).action_masks())
        info = self._last_info
        rows = obs[0].reshape(self.candidate_shape)
        self.observe(rows, info["candidate_ids"], int(action), int(info["target_class"]))
        return np.array([action])

    def _on_learn_end(self) -> None:
        self.finish_learning()
        if self._episode_window["r"]:
            self._dump_logs()
        self.logger.close()


def _refuse_vector(env: Env) -> gym.Env:
    """``env``, refused if it is a vector env: rollouts play one episode at a time, and a vector
    env would be stepped in part."""
    if isinstance(env, gym.vector.VectorEnv):
        raise ValueError(
            "heuristics and the supervised ablation learn on one env, not a vector env; pass "
            "gym.make(...) (only the DDQN trains on vector envs)"
        )
    return env
