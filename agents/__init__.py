"""Agents: the Double DQN learner's prioritized n-step replay and its sum tree."""

from __future__ import annotations

from misical_gym.agents.replay import NStepPrioritizedReplayBuffer, ReplaySample
from misical_gym.agents.sum_tree import SumTree

__all__ = ["NStepPrioritizedReplayBuffer", "ReplaySample", "SumTree"]
