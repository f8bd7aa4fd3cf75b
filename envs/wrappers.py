"""The one place where an episode's selection statistics are computed.

:class:`RecordSelectionStatistics` sums an episode's return, length, target pixels and hits,
and puts them in ``info["episode"]`` when the episode ends, as Gymnasium's
``RecordEpisodeStatistics`` does for return and length. Every learner, callback and report of
the package reads them from there (CleanRL's pattern), so they are computed once.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym


class RecordSelectionStatistics(gym.Wrapper):
    """Adds the finished episode's statistics to ``info["episode"]``.

    Keys:
        ``r``: the episode's return; ``l``: its length in picks;
        ``target_pixels``: target pixels in the picked patches (the env's ``info``);
        ``hits``: picks holding the target; ``hit_rate``: ``hits / l``.

    Keys already in ``info["episode"]`` are kept, so SB3's ``Monitor`` may sit inside this
    wrapper (its rounded ``r`` and its ``t`` stay what SB3 logs). Place this wrapper outside
    Gymnasium's ``RecordEpisodeStatistics``, which refuses an ``info`` that already has the key.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._clear()

    def _clear(self) -> None:
        self._return = 0.0
        self._length = 0
        self._pixels = 0
        self._hits = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._clear()
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        pixels = int(info["target_pixels"])
        self._return += float(reward)
        self._length += 1
        self._pixels += pixels
        self._hits += int(pixels > 0)
        if terminated or truncated:
            mine = {
                "r": self._return,
                "l": self._length,
                "target_pixels": self._pixels,
                "hits": self._hits,
                "hit_rate": self._hits / self._length,
            }
            info["episode"] = {**mine, **info.get("episode", {})}
        return obs, reward, terminated, truncated, info


def with_statistics(env: gym.Env) -> gym.Env:
    """``env``, wrapped in :class:`RecordSelectionStatistics` unless a wrapper of it already is."""
    inner: gym.Env = env
    while isinstance(inner, gym.Wrapper):
        if isinstance(inner, RecordSelectionStatistics):
            return env
        inner = inner.env
    return RecordSelectionStatistics(env)
