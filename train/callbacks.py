"""SB3 callbacks that give SB3 agents the MiSiCAL TensorBoard keys and a tqdm progress bar."""

from __future__ import annotations

from collections import deque

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm


class ActiveLearningMetrics(BaseCallback):
    """Records ``al/target_pixels`` (target pixels per episode) and ``al/hit_rate`` (share of
    picks holding the target) over the last 100 episodes; SB3 writes them with its own keys."""

    def __init__(self, window: int = 100) -> None:
        super().__init__()
        self.pixels: deque[int] = deque(maxlen=window)
        self.hits: deque[int] = deque(maxlen=window)
        self.lengths: deque[int] = deque(maxlen=window)
        self._running: np.ndarray | None = None

    def _on_step(self) -> bool:
        infos, dones = self.locals["infos"], self.locals["dones"]
        if self._running is None:
            self._running = np.zeros((len(infos), 3), dtype=np.int64)
        for i, (info, done) in enumerate(zip(infos, dones, strict=True)):
            pixels = int(info.get("target_pixels", 0))
            self._running[i] += (pixels, pixels > 0, 1)
            if done:
                self.pixels.append(int(self._running[i, 0]))
                self.hits.append(int(self._running[i, 1]))
                self.lengths.append(int(self._running[i, 2]))
                self._running[i] = 0
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
