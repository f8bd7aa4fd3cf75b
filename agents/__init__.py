"""Agents: the Double DQN learner, its prioritized n-step replay and its sum tree.

``DDQN`` and ``DeepSetQNetwork`` need torch, so they are imported on first access: importing the
replay alone stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from misical_gym.agents.replay import NStepPrioritizedReplayBuffer, ReplaySample
from misical_gym.agents.sum_tree import SumTree

if TYPE_CHECKING:
    from misical_gym.agents.ddqn import DDQN
    from misical_gym.agents.networks import DeepSetQNetwork

__all__ = ["DDQN", "DeepSetQNetwork", "NStepPrioritizedReplayBuffer", "ReplaySample", "SumTree"]


def __getattr__(name: str) -> Any:
    if name == "DDQN":
        from misical_gym.agents.ddqn import DDQN

        return DDQN
    if name == "DeepSetQNetwork":
        from misical_gym.agents.networks import DeepSetQNetwork

        return DeepSetQNetwork
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
