"""Shared by policies that do not learn by gradient steps (heuristics, the supervised ablation).

:class:`RolloutLearner` gives them SB3's interface: ``predict`` picks the highest-scoring valid
candidate, and ``learn`` rolls the policy out in its environment, logging the same TensorBoard
keys as SB3 agents (``rollout/*``, ``time/fps``, ``al/*``) so every agent's curves overlay.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from misical_gym.agents.logger import run_logger
from misical_gym.agents.policy import greedy_actions


class RolloutLearner:
    """Base class: subclasses define :meth:`scores` and may extend :meth:`observe`."""

    def __init__(
        self,
        env: gym.Env,
        seed: int | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        self.env = env
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.tensorboard_log = tensorboard_log
        self.verbose = verbose
        self.candidate_shape: tuple[int, int] = tuple(env.unwrapped.candidate_shape)
        self.feature_names: tuple[str, ...] = tuple(env.unwrapped.feature_names)
        self.num_timesteps = 0
        self._episodes = 0

    # ------------------------------------------------------------------ acting
    def scores(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

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
        return greedy_actions(self, observation, action_masks, self.rng)[0], None

    def set_env(self, env: gym.Env) -> None:
        if tuple(env.unwrapped.candidate_shape) != self.candidate_shape:
            raise ValueError(
                f"the new env's candidate shape {env.unwrapped.candidate_shape} differs from "
                f"{self.candidate_shape}"
            )
        self.env = env

    def get_env(self) -> gym.Env:
        return self.env

    # ------------------------------------------------------------------ learning
    def observe(
        self, rows: np.ndarray, candidate_ids: np.ndarray, action: int, target: int
    ) -> None:
        """Called after every step of :meth:`learn` with the rows and ids acted on."""

    def finish_learning(self) -> None:
        """Called at the end of :meth:`learn`; heuristics have nothing to fit."""

    def learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 4,
        tb_log_name: str = "run",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> RolloutLearner:
        """Roll the policy out for ``total_timesteps`` steps, logging SB3's rollout keys."""
        from tqdm.auto import tqdm

        if reset_num_timesteps:
            self.num_timesteps = 0
        logger = run_logger(self.verbose, self.tensorboard_log, tb_log_name, reset_num_timesteps)
        window: dict[str, deque[float]] = {
            key: deque(maxlen=100) for key in ("reward", "length", "pixels", "hits")
        }
        start, start_steps = time.time(), self.num_timesteps
        obs, info = self.env.reset(seed=None if self.seed is None else self.seed + self._episodes)
        episode = {"reward": 0.0, "length": 0, "pixels": 0, "hits": 0}
        for _ in tqdm(range(total_timesteps), disable=not progress_bar, desc=tb_log_name):
            action, _ = self.predict(obs, action_masks=self.env.unwrapped.action_masks())
            rows = np.asarray(obs).reshape(self.candidate_shape)
            self.observe(rows, info["candidate_ids"], int(action), int(info["target_class"]))
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            self.num_timesteps += 1
            episode["reward"] += float(reward)
            episode["length"] += 1
            episode["pixels"] += int(info["target_pixels"])
            episode["hits"] += int(info["target_pixels"] > 0)
            obs = next_obs
            if terminated or truncated:
                for key, value in episode.items():
                    window[key].append(value)
                episode = {"reward": 0.0, "length": 0, "pixels": 0, "hits": 0}
                self._episodes += 1
                obs, info = self.env.reset()
                if self._episodes % log_interval == 0:
                    self._dump(logger, window, start, start_steps)
        self.finish_learning()
        if window["reward"]:
            self._dump(logger, window, start, start_steps)
        logger.close()
        return self

    def _dump(self, logger: Any, window: dict[str, deque[float]], start: float, steps: int) -> None:
        logger.record("rollout/ep_rew_mean", float(np.mean(window["reward"])))
        logger.record("rollout/ep_len_mean", float(np.mean(window["length"])))
        logger.record("al/target_pixels", float(np.mean(window["pixels"])))
        logger.record(
            "al/hit_rate", float(np.sum(window["hits"]) / max(np.sum(window["length"]), 1))
        )
        elapsed = max(time.time() - start, 1e-9)
        logger.record("time/fps", int((self.num_timesteps - steps) / elapsed))
        logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        logger.dump(step=self.num_timesteps)
