"""The one place where an episode's selection statistics are computed.

:class:`RecordSelectionStatistics` sums an episode's return, length, target pixels and hits,
and puts them in ``info["episode"]`` when the episode ends, as Gymnasium's
``RecordEpisodeStatistics`` does for return and length. Every learner, callback and report of
the package reads them from there (CleanRL's pattern), so they are computed once.
:class:`RecordVectorSelectionStatistics` is its vector form, for a Gymnasium ``VectorEnv``.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper


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
            mine = _statistics(self._return, self._length, self._pixels, self._hits)
            info["episode"] = {**mine, **info.get("episode", {})}
        return obs, reward, terminated, truncated, info


class RecordVectorSelectionStatistics(VectorWrapper):
    """:class:`RecordSelectionStatistics` for a vector env in Gymnasium's ``NEXT_STEP`` autoreset.

    As Gymnasium's vector ``RecordEpisodeStatistics``: at a step where some sub-envs end their
    episodes, ``info["episode"]`` holds one array per key (0 for the others) and
    ``info["_episode"]`` marks the sub-envs that ended. The step after an end (the autoreset,
    which returns the first observation of the next episode) counts towards no episode.

    Raises:
        ValueError: The env autoresets in another mode.
    """

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode != AutoresetMode.NEXT_STEP:
            raise ValueError(
                f"episode statistics need a vector env in NEXT_STEP autoreset mode, got {mode}"
            )
        n = env.num_envs
        self._returns = np.zeros(n)
        self._lengths = np.zeros(n, dtype=np.int64)
        self._pixels = np.zeros(n, dtype=np.int64)
        self._hits = np.zeros(n, dtype=np.int64)
        self._resetting = np.zeros(n, dtype=bool)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        # Gymnasium's vector envs take a seed per sub-env, though VectorEnv.reset annotates int.
        obs, info = self.env.reset(seed=seed, options=options)  # type: ignore[arg-type]
        mask = (options or {}).get("reset_mask")
        cleared = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        for counter in (self._returns, self._lengths, self._pixels, self._hits):
            counter[cleared] = 0
        self._resetting[cleared] = False
        return obs, info

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        acting = ~self._resetting
        for counter in (self._returns, self._lengths, self._pixels, self._hits):
            counter[self._resetting] = 0
        # Autoreset steps carry no target_pixels (SyncVectorEnv) or 0 (the native env).
        pixels = np.where(acting, np.asarray(info["target_pixels"], dtype=np.int64), 0)
        self._returns += np.where(acting, rewards, 0.0)
        self._lengths += acting
        self._pixels += pixels
        self._hits += pixels > 0
        ended = (np.asarray(terminated) | np.asarray(truncated)) & acting
        if ended.any():
            if "episode" in info:
                raise ValueError("info already has an 'episode' key: wrap the env only once")
            mine = _statistics(self._returns, self._lengths, self._pixels, self._hits)
            info["episode"] = {key: np.where(ended, value, 0) for key, value in mine.items()}
            info["_episode"] = ended
        self._resetting = ended
        return obs, rewards, terminated, truncated, info


def _statistics(returns: Any, lengths: Any, pixels: Any, hits: Any) -> dict[str, Any]:
    """The statistics of an episode (scalars) or of sub-envs (arrays), by their sums."""
    return {
        "r": returns,
        "l": lengths,
        "target_pixels": pixels,
        "hits": hits,
        "hit_rate": hits / np.maximum(lengths, 1),
    }


def with_statistics(env: gym.Env | VectorEnv) -> Any:
    """``env``, wrapped in :class:`RecordSelectionStatistics` (a vector env: in
    :class:`RecordVectorSelectionStatistics`) unless a wrapper of it already is."""
    inner: Any = env
    while isinstance(inner, gym.Wrapper | VectorWrapper):
        if isinstance(inner, RecordSelectionStatistics | RecordVectorSelectionStatistics):
            return env
        inner = inner.env
    if isinstance(env, VectorEnv):
        return RecordVectorSelectionStatistics(env)
    return RecordSelectionStatistics(env)
