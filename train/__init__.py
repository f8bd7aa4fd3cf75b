"""Training entry points: swap agents by name, pretrain then deploy, TensorBoard runs.

Importing this package is light; ``make_agent`` and ``run_training`` import torch when called.
"""

from __future__ import annotations

from misical_gym.train.agents import AGENTS, load_agent, make_agent
from misical_gym.train.run import TrainingRun, greedy_pool_statistics, run_training

__all__ = [
    "AGENTS",
    "TrainingRun",
    "greedy_pool_statistics",
    "load_agent",
    "make_agent",
    "run_training",
]
