"""SB3 callbacks that give SB3 agents the MiSiCAL TensorBoard keys and a tqdm progress bar."""

from __future__ import annotations

from collections import deque

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm


class ActiveLearningMetrics(BaseCallback):
    """Records ``al/target_pixels`` (target pixels per episode) and ``al/hit_rate`` (share of
    picks holding the target) over the last 100 episodes, read from ``info["episode"]``
    (:class:`~misical_gym.envs.wrappers.RecordSelectionStatistics`); SB3 writes them with its
    own keys."""

    def __init__(self, window: int = 100) -> None:
        super().__init__()
        self.pixels: deque[int] = deque(maxlen=window)
        self.hits: deque[int] = deque(maxlen=window)
        self.lengths: deque[int] = deque(maxlen=window)

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            if done:
                episode = info["episode"]
                self.pixels.append(int(episode["target_pixels"]))
                self.hits.append(int(episode["hits"]))
                self.lengths.append(int(episode["l"]))
                self.logger.record("al/target_pixels", float(np.mean(self.pixels)))
                self.logger.record("al/hit_rate", sum(self.hits) / max(sum(self.lengths), 1))
        return True


class ProgressBar(BaseCallback):
    """A tqdm bar over the timesteps of one ``learn`` call."""

    def __init__(self, total: int, description: str) -> None:
        super().__init__()
        self.total, self.description = total, description
        self.bar: tqdm | None = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, desc=self.description, unit="step")

    def _on_step(self) -> bool:
        assert self.bar is not None
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
