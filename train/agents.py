"""One registry of every agent, so a training script swaps agents by name.

``make_agent(name, env, **hyperparams)`` returns an object with SB3's ``learn``, ``predict``
(with ``action_masks``), ``save`` and ``load``: the package's DDQN, SB3's and sb3-contrib's
algorithms, the heuristics and the supervised ablation.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import yaml

from misical_gym.agents.policy import Agent, as_rows, candidate_masks, greedy_actions
from misical_gym.envs.wrappers import with_statistics
from misical_gym.train import yaml_values

if TYPE_CHECKING:
    import torch

SB3_AGENTS: tuple[str, ...] = ("dqn", "qrdqn", "ppo", "a2c", "maskable-ppo")
HEURISTIC_AGENTS: tuple[str, ...] = ("random", "bald", "entropy", "presence", "oracle")
DDQN_VARIANTS: dict[str, dict[str, Any]] = {
    "ddqn": {},
    "ddqn-plain": {"counterfactual_targets": False, "hindsight_fraction": 0.0},
}
"""The package's DDQN under each name, with what the name fixes over ``ddqn.yml``:
``ddqn-plain`` is the paper's Double DQN (one target per sample, no relabelling), kept as the
ablation of the counterfactual targets and hindsight relabelling."""
DDQN_AGENTS: tuple[str, ...] = tuple(DDQN_VARIANTS)
AGENTS: tuple[str, ...] = (*DDQN_AGENTS, *SB3_AGENTS, "supervised", *HEURISTIC_AGENTS)
"""Every agent name; ``oracle`` reads the true counts and is for evaluation only."""
EXPERIMENT_KEYS: tuple[str, ...] = ("n_timesteps", "env_kwargs")
"""Keys of a hyperparameter entry that configure the run, not the agent, in rl-zoo3's names, so
rl-zoo3 loads the packaged files as they are: ``n_timesteps`` (env steps) and ``env_kwargs``."""
DEFAULT_TIMESTEPS = 10_000
"""Env steps of a run whose entry has no ``n_timesteps`` (the heuristics have no file)."""


def agent_class(name: str) -> type[Any]:
    """The class behind an agent name (imports torch for the learning agents)."""
    check_agent(name)
    if name in DDQN_AGENTS:
        from misical_gym.agents.ddqn import DDQN

        return DDQN
    if name == "a2c":
        return _a2c_logging_its_loss()
    if name in ("dqn", "ppo"):
        import stable_baselines3

        return getattr(stable_baselines3, name.upper())
    if name == "qrdqn":
        from sb3_contrib import QRDQN

        return QRDQN
    if name == "maskable-ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    if name == "supervised":
        from misical_gym.agents.supervised import SupervisedPolicy

        return SupervisedPolicy
    from misical_gym.agents.heuristics import HeuristicPolicy

    return HeuristicPolicy


@functools.cache
def _a2c_logging_its_loss() -> type:
    """SB3's A2C, also logging ``train/loss``: the loss it minimises (policy loss plus its
    entropy and value terms), which SB3 logs only in parts while DQN and PPO log it whole."""
    from stable_baselines3 import A2C

    class LoggedA2C(A2C):
        def train(self) -> None:
            super().train()
            logged = self.logger.name_to_value
            self.logger.record(
                "train/loss",
                logged["train/policy_loss"]
                + self.ent_coef * logged["train/entropy_loss"]
                + self.vf_coef * logged["train/value_loss"],
            )

    return LoggedA2C


def check_agent(name: str) -> None:
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}")


def default_hyperparams(name: str, env_id: str) -> dict[str, Any]:
    """The packaged rl-zoo3-style defaults of ``name`` for ``env_id`` (``default`` otherwise)."""
    check_agent(name)
    base = "ddqn" if name in DDQN_AGENTS else name  # the variants share ddqn.yml
    file = resources.files("misical_gym.train") / "hyperparams" / f"{base}.yml"
    if not file.is_file():
        return {}
    entry = dict(select_env_entry(yaml_values.load(file.read_text()) or {}, env_id))
    return entry | DDQN_VARIANTS.get(name, {})


def select_env_entry(table: dict[str, Any], env_id: str) -> dict[str, Any]:
    """The entry for ``env_id`` in a file keyed by env id, else its ``default``, else the file."""
    if env_id in table:
        return table[env_id] or {}
    if "default" in table:
        return table["default"] or {}
    if any(str(key).startswith("MiSiCAL") for key in table):
        return {}
    return table


def load_hyperparams(name: str, env_id: str, override_file: str | Path | None) -> dict[str, Any]:
    """Packaged defaults updated by an override YAML (keyed by env id, or flat).

    Raises:
        FileNotFoundError: the override file does not exist.
        ValueError: it is not a YAML mapping, or it is keyed by env ids with neither ``env_id``
            nor ``default`` among them (the message lists its keys).
    """
    params = default_hyperparams(name, env_id)
    if override_file is None:
        return params
    path = Path(override_file)
    if not path.is_file():
        raise FileNotFoundError(f"hyperparameter file {path} does not exist")
    try:
        table = yaml_values.load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"hyperparameter file {path} is not valid YAML: {exc}") from None
    if not isinstance(table, dict):
        raise ValueError(f"hyperparameter file {path} must hold a mapping of names to values")
    keyed_by_env = any(str(key).startswith("MiSiCAL") for key in table)
    if keyed_by_env and env_id not in table and "default" not in table:
        # A misspelt env id would otherwise drop every override without a word.
        raise ValueError(
            f"hyperparameter file {path} has no entry for {env_id!r} and no 'default'; "
            f"its entries: {', '.join(map(str, table))}"
        )
    entry = select_env_entry(table, env_id)
    if not isinstance(entry, dict):
        raise ValueError(f"hyperparameter file {path}: the entry for {env_id!r} is not a mapping")
    params.update(entry)
    return params


def split_experiment(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An entry's agent hyperparameters and its :data:`EXPERIMENT_KEYS`, checked.

    Returns:
        The entry without the experiment keys, and ``{"n_timesteps": int, "env_kwargs": dict}``
        (``DEFAULT_TIMESTEPS`` and ``{}`` where the entry has none).

    Raises:
        ValueError: ``n_timesteps`` is not a non-negative integer, or ``env_kwargs`` is not a
            mapping of argument names.
    """
    agent = {k: v for k, v in params.items() if k not in EXPERIMENT_KEYS}
    steps = params.get("n_timesteps", DEFAULT_TIMESTEPS)
    # YAML writes 1e4 as a float: accept whole numbers.
    if isinstance(steps, bool) or not isinstance(steps, int | float) or steps < 0 or steps % 1:
        raise ValueError(f"n_timesteps must be a non-negative integer, got {steps!r}")
    env_kwargs = params.get("env_kwargs") or {}
    if not isinstance(env_kwargs, dict) or not all(isinstance(k, str) for k in env_kwargs):
        raise ValueError(f"env_kwargs must map argument names to values, got {env_kwargs!r}")
    return agent, {"n_timesteps": int(steps), "env_kwargs": dict(env_kwargs)}


def valid_hyperparams(name: str) -> tuple[str, ...]:
    """The keyword arguments an agent's constructor accepts (besides the env)."""
    cls = agent_class(name)
    config_class = getattr(cls, "config_class", None)
    if config_class is not None:  # the DDQN: its constructor keywords are the config's fields
        return tuple(f.name for f in dataclasses.fields(config_class))
    skip = {"self", "env", "name", "args", "kwargs"}
    keys = [k for k in inspect.signature(cls.__init__).parameters if k not in skip]
    return tuple(keys)


def check_hyperparams(name: str, hyperparams: dict[str, Any]) -> None:
    """Raise ValueError, listing the valid keys, when agent ``name`` takes no such keyword."""
    valid = valid_hyperparams(name)
    unknown = sorted(set(hyperparams) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for agent {name!r}; "
            f"valid keys: {', '.join(valid)}"
        )


def make_agent(name: str, env: gym.Env, **hyperparams: Any) -> Agent:
    """Build agent ``name`` on ``env``.

    Args:
        name: One of :data:`AGENTS`.
        env: A MiSiCAL environment.
        **hyperparams: Constructor arguments (``policy`` for SB3 agents defaults to MlpPolicy).

    Raises:
        ValueError: an unknown agent or hyperparameter key; the message lists the valid ones.
    """
    cls = agent_class(name)
    params = DDQN_VARIANTS.get(name, {}) | hyperparams
    check_hyperparams(name, params)
    if name in HEURISTIC_AGENTS:
        return cls(name, env, **params)
    if "policy" in valid_hyperparams(name):
        policy = params.pop("policy", "MlpPolicy")
        return MaskedSB3(cls(policy, sb3_env(env), **params))
    return cls(env, **params)


def load_agent(name: str, path: str | Path, env: gym.Env | None, device: str = "auto") -> Agent:
    """Load an agent saved by its ``save``."""
    with warnings.catch_warnings():
        # SB3 saves the n-step buffer class it built from ``n_steps`` next to ``n_steps``
        # itself, then warns at load that ``n_steps`` is ignored; the loaded buffer is n-step.
        warnings.filterwarnings("ignore", message=r"`n_steps=\d+` is ignored", category=UserWarning)
        if name in SB3_AGENTS:
            return MaskedSB3(agent_class(name).load(path, env=sb3_env(env), device=device))
        return agent_class(name).load(path, env=env, device=device)


def sb3_env(env: gym.Env | None) -> gym.Env | None:
    """``env`` as SB3 agents get it: in SB3's ``Monitor`` (which SB3 would add itself), inside
    :class:`~misical_gym.envs.wrappers.RecordSelectionStatistics`, so that the selection
    statistics survive in ``info["episode"]`` (the Monitor replaces that key)."""
    if env is None:
        return None
    from stable_baselines3.common.env_util import is_wrapped
    from stable_baselines3.common.monitor import Monitor

    return with_statistics(env if is_wrapped(env, Monitor) else Monitor(env))


class MaskedSB3:
    """An SB3 model whose ``predict`` honours ``action_masks`` like the package's agents.

    MaskablePPO masks natively. For DQN and QR-DQN the greedy action is the arg-max of the
    Q-values over valid actions; for PPO and A2C, of the policy's logits (or a sample from the
    masked distribution when not deterministic). Everything else is the wrapped model's.
    """

    def __init__(self, model: Any) -> None:
        # Any: SB3's policies differ in the networks read here (DQN's q_net, QR-DQN's
        # quantile_net, the actor-critics' distribution), which its types leave to hasattr.
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def learn(self, *args: Any, **kwargs: Any) -> MaskedSB3:
        self.model.learn(*args, **kwargs)
        return self

    def set_env(self, env: gym.Env) -> None:
        self.model.set_env(sb3_env(env))

    @property
    def tensorboard_log(self) -> str | None:
        return self.model.tensorboard_log

    @tensorboard_log.setter
    def tensorboard_log(self, path: str | None) -> None:
        self.model.tensorboard_log = path  # where the next learn call logs

    @property
    def candidate_shape(self) -> tuple[int, int]:
        """``(K, F)``: one action per candidate, the flat observation split into K rows."""
        k = int(self.model.action_space.n)
        return k, int(np.prod(self.model.observation_space.shape)) // k

    @property
    def tie_break_rng(self) -> None:
        """Exact ties go to the lowest slot, as SB3's own arg-max does."""
        return None

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Per-action preferences ``[B, K]``: Q-values (DQN, QR-DQN mean) or policy logits."""
        return self._scores(rows).cpu().numpy()

    def _scores(self, rows: np.ndarray) -> torch.Tensor:
        import torch

        policy = self.model.policy
        obs, _ = policy.obs_to_tensor(np.asarray(rows).reshape(len(rows), -1))
        with torch.no_grad():
            if hasattr(policy, "q_net"):  # DQN
                return policy.q_net(obs)
            if hasattr(policy, "quantile_net"):  # QR-DQN
                return policy.quantile_net(obs).mean(dim=1)
            return policy.get_distribution(obs).distribution.logits  # actor-critic

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        import torch

        if type(self.model).__name__ == "MaskablePPO" or action_masks is None:
            kwargs = {} if action_masks is None else {"action_masks": action_masks}
            return self.model.predict(observation, state, episode_start, deterministic, **kwargs)
        if deterministic or not hasattr(self.model.policy, "get_distribution"):
            return greedy_actions(self, observation, action_masks)[0], state
        rows, single = as_rows(observation, self.candidate_shape)
        logits = self._scores(rows)
        masks = torch.as_tensor(candidate_masks(rows, action_masks), device=logits.device)
        logits = logits.masked_fill(~masks, -torch.inf)
        actions = torch.distributions.Categorical(logits=logits).sample().cpu().numpy()
        return (actions[0] if single else actions), state
