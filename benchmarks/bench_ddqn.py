"""The DDQN's speed against SB3's DQN: end-to-end ``learn()`` env-steps/s, gradient updates/s.

End to end: ``DDQN.learn(S)`` against SB3 ``DQN.learn(S)`` (SB3's default ``MlpPolicy``) on the
same env with the same schedule (:data:`SCHEDULE`: a training round of one gradient step every
4 env steps, SB3's default, batch 64, 200 random steps first, a 10,000-transition buffer, 3-step
returns, one torch thread), on the synthetic store (``MiSiCAL-Synthetic``, prepared on first
use) and on a COCO-10k-shaped random store (171 classes). The two take turns, one run each per
repeat; the ratio is the median of per-repeat ratios. The DDQN also runs on the native vector
env with N = 1, 8 and 32 sub-envs (COCO-10k shape, the same schedule and env steps).

One gradient update of the DDQN is everything ``_train_step`` does: a prioritized sample, the
rebuild of its observations from the store (compact replay), the Double DQN target, the Huber
loss, the backward pass, clipping, the Adam step, the priority update and the Polyak update.
``ddqn_compact`` and ``ddqn_raw`` are the default agent (counterfactual targets in compact mode;
raw replay has no store ids, so its update is the plain one), ``ddqn_compact_plain`` the plain
Double DQN update in compact mode, so the counterfactual targets' own cost shows.
SB3's side is ``DQN.train(gradient_steps, batch_size=64)`` (uniform n-step replay, no priority
work, target copies outside ``train``). Both run single-threaded on the same env, a random store
of COCO-Stuff 10k's candidate shape (K=32 candidates of F=177 features), with replays filled by
the same number of random steps.

"Equal-sized" is read two ways, both reported: SB3's MLP with the DDQN's parameter count, and
SB3's MLP with the DDQN's hidden width (its embedding's, ``phi_arch[-1]``: 16 by default).
The DeepSets network applies its weights to every candidate, so per sample it does about K
times the multiply-adds of an MLP with as many parameters; the ``macs_per_sample`` fields make
that visible.

Contenders take turns, one timed block each per repeat; rates are medians over repeats and
ratios medians of per-repeat ratios. Also reports replay bytes per transition in both modes and
the size of a 1,000,000-transition compact replay. Prints one JSON object.

``--network packaged`` gives the DDQN the Q-network of the packaged hyperparameters
(``train/hyperparams/ddqn.yml``, what ``misical train`` builds) instead of the constructor's;
the schedule stays the one above.

Run: ``python benchmarks/bench_ddqn.py [--iterations I] [--repeats R] [--steps S]
[--e2e-repeats E] [--device cpu|cuda] [--network constructor|packaged]``
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3 import DQN

import misical_gym  # noqa: F401  (registers the environments)
from misical_gym.agents import DDQN
from misical_gym.data.classes import COCO_STUFF_CLASSES
from misical_gym.testing import write_random_store
from misical_gym.train.agents import default_hyperparams

POOL_SIZE = 32
BATCH_SIZE = 64
N_STEP = 3
FILL_STEPS = 5_000
SCHEDULE = {
    "train_freq": 4,
    "gradient_steps": 1,
    "batch_size": BATCH_SIZE,
    "learning_starts": 200,
    "buffer_size": 10_000,
}
"""The end-to-end schedule, shared by both learners (plus ``N_STEP``-step returns)."""
VECTOR_SIZES = (1, 8, 32)
NETWORK: dict[str, Any] = {}
"""The DDQN's ``policy_kwargs`` (``--network``): empty for the constructor's network."""


def make_env(root: Path) -> gym.Env:
    return gym.make("MiSiCAL-Store", root=str(root), pool_size=POOL_SIZE, budget=32)


def ddqn_contender(
    root: Path, replay: str, device: str, counterfactual: bool = True
) -> tuple[Callable[[], None], DDQN]:
    model = DDQN(
        make_env(root),
        policy_kwargs=NETWORK,
        replay=replay,
        counterfactual_targets=counterfactual,
        buffer_size=FILL_STEPS * 2,
        batch_size=BATCH_SIZE,
        n_step=N_STEP,
        learning_starts=10**9,  # fill with random steps only
        seed=0,
        device=device,
    )
    model.learn(FILL_STEPS)
    return (lambda: model._train_step(beta=0.5)), model


def sb3_contender(root: Path, width: int, device: str) -> tuple[Callable[[], None], DQN]:
    model = DQN(
        "MlpPolicy",
        make_env(root),
        buffer_size=FILL_STEPS * 2,
        batch_size=BATCH_SIZE,
        n_steps=N_STEP,
        learning_starts=10**9,
        policy_kwargs={"net_arch": [width, width]},
        seed=0,
        device=device,
    )
    model.learn(FILL_STEPS)
    return (lambda: model.train(gradient_steps=1, batch_size=BATCH_SIZE)), model


def learn_rate(model: DDQN | DQN, steps: int) -> float:
    """Env steps per second of ``model.learn(steps)``."""
    start = time.perf_counter()
    model.learn(steps)
    return steps / (time.perf_counter() - start)


def ddqn_learner(env: object, device: str) -> DDQN:
    return DDQN(env, n_step=N_STEP, seed=0, device=device, policy_kwargs=NETWORK, **SCHEDULE)


def sb3_learner(env: gym.Env, device: str) -> DQN:
    return DQN("MlpPolicy", env, n_steps=N_STEP, seed=0, device=device, **SCHEDULE)


def end_to_end(
    make: Callable[[], gym.Env], steps: int, repeats: int, device: str
) -> dict[str, float]:
    """Median env-steps/s of both learners on ``make()``'s env, and their median ratio."""
    for learner in (ddqn_learner, sb3_learner):  # warm-up: compiled kernels, caches
        learner(make(), device).learn(SCHEDULE["learning_starts"] + 8)
    ddqn, sb3 = [], []
    for _ in range(repeats):
        ddqn.append(learn_rate(ddqn_learner(make(), device), steps))
        sb3.append(learn_rate(sb3_learner(make(), device), steps))
    return {
        "ddqn": round(statistics.median(ddqn), 1),
        "sb3_dqn": round(statistics.median(sb3), 1),
        "ratio": round(statistics.median(a / b for a, b in zip(ddqn, sb3, strict=True)), 3),
    }


def vector_rates(root: Path, steps: int, repeats: int, device: str) -> dict[str, float]:
    """Median env-steps/s of ``DDQN.learn`` on the native vector env of each size."""
    rates: dict[str, float] = {}
    for n in VECTOR_SIZES:
        runs = []
        for _ in range(repeats):
            env = gym.make_vec(
                "MiSiCAL-Store",
                num_envs=n,
                vectorization_mode="vector_entry_point",
                root=str(root),
                pool_size=POOL_SIZE,
                budget=32,
            )
            runs.append(learn_rate(ddqn_learner(env, device), steps))
        rates[str(n)] = round(statistics.median(runs), 1)
    return rates


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def macs_per_sample(module: torch.nn.Module, rows: int) -> int:
    """Multiply-adds of one forward pass over one observation (``rows`` rows per Linear)."""
    return sum(
        rows * m.in_features * m.out_features
        for m in module.modules()
        if isinstance(m, torch.nn.Linear)
    )


def ddqn_macs(model: DDQN) -> int:
    net, k = model.q_net, POOL_SIZE
    per_candidate = macs_per_sample(net.phi, k) + macs_per_sample(net.rho_embedding, k)
    return per_candidate + macs_per_sample(net.rho, k) + macs_per_sample(net.rho_context, 1)


def equal_params_width(params: int, inputs: int, outputs: int) -> int:
    """Width h of SB3's [h, h] MLP whose parameter count is closest to ``params``."""
    return min(
        range(1, 1024),
        key=lambda h: abs(inputs * h + h + h * h + h + h * outputs + outputs - params),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200, help="updates per timed block")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--steps", type=int, default=2048, help="env steps of each end-to-end learn() run"
    )
    parser.add_argument("--e2e-repeats", type=int, default=3, help="end-to-end runs per learner")
    parser.add_argument(
        "--network",
        choices=("constructor", "packaged"),
        default="constructor",
        help="the DDQN's Q-network: DDQNConfig's default, or ddqn.yml's (misical train's)",
    )
    args = parser.parse_args()
    if args.network == "packaged":
        NETWORK.update(default_hyperparams("ddqn", "MiSiCAL-COCO10k").get("policy_kwargs", {}))
    torch.set_num_threads(1)
    synthetic = end_to_end(
        lambda: gym.make("MiSiCAL-Synthetic", pool_size=POOL_SIZE, budget=32),
        args.steps,
        args.e2e_repeats,
        args.device,
    )

    with tempfile.TemporaryDirectory() as tmp:
        store = write_random_store(
            Path(tmp) / "store", num_images=1_000, class_names=COCO_STUFF_CLASSES, seed=0
        )
        env = make_env(store.path)
        k, f = env.unwrapped.candidate_shape
        contenders: dict[str, tuple[Callable[[], None], object]] = {
            "ddqn_compact": ddqn_contender(store.path, "compact", args.device),
            "ddqn_raw": ddqn_contender(store.path, "raw", args.device),
            "ddqn_compact_plain": ddqn_contender(store.path, "compact", args.device, False),
        }
        ddqn = contenders["ddqn_compact"][1]
        ddqn_params = num_params(ddqn.q_net)
        width = equal_params_width(ddqn_params, k * f, k)
        contenders["sb3_dqn_equal_params"] = sb3_contender(store.path, width, args.device)
        hidden = ddqn.q_net.arch["phi_arch"][-1]
        contenders["sb3_dqn_equal_width"] = sb3_contender(store.path, hidden, args.device)

        for step, _ in contenders.values():  # warm-up
            for _ in range(20):
                step()
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.repeats):
            for name, (step, _) in contenders.items():
                start = time.perf_counter()
                for _ in range(args.iterations):
                    step()
                rates[name].append(args.iterations / (time.perf_counter() - start))

        networks = {
            "ddqn": {"params": ddqn_params, "macs_per_sample": ddqn_macs(ddqn), **ddqn.q_net.arch}
        }
        for name in ("sb3_dqn_equal_params", "sb3_dqn_equal_width"):
            q_net = contenders[name][1].q_net
            networks[name] = {
                "params": num_params(q_net),
                "macs_per_sample": macs_per_sample(q_net, 1),
                "net_arch": contenders[name][1].policy_kwargs["net_arch"],
            }
        ratios = {
            f"ddqn_{mode}_over_{peer}": round(
                statistics.median(
                    a / b for a, b in zip(rates[f"ddqn_{mode}"], rates[peer], strict=True)
                ),
                3,
            )
            for mode in ("compact", "raw", "compact_plain")
            for peer in ("sb3_dqn_equal_params", "sb3_dqn_equal_width")
        }
        coco = end_to_end(lambda: make_env(store.path), args.steps, args.e2e_repeats, args.device)
        vector = vector_rates(store.path, args.steps, args.e2e_repeats, args.device)
        compact_bytes = contenders["ddqn_compact"][1].replay_buffer.memory_bytes_per_transition
        raw_bytes = contenders["ddqn_raw"][1].replay_buffer.memory_bytes_per_transition
        result = {
            "benchmark": "ddqn_speed",
            "end_to_end": {
                "what": "env steps/s of learn(), DDQN vs SB3 DQN (MlpPolicy), same env",
                "schedule": {**SCHEDULE, "n_step": N_STEP},
                "env_steps": args.steps,
                "repeats": args.e2e_repeats,
                "synthetic": synthetic,
                "coco10k_shape": coco,
                "vector_env_steps_per_second": vector,
            },
            "batch_size": BATCH_SIZE,
            "candidate_shape": [k, f],
            "n_step": N_STEP,
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "update_repeats": args.repeats,
            "iterations_per_block": args.iterations,
            "updates_per_second": {
                name: round(statistics.median(values), 1) for name, values in rates.items()
            },
            "ratios": ratios,
            "networks": networks,
            "replay_bytes_per_transition": {
                "compact": round(compact_bytes, 1),
                "raw": round(raw_bytes, 1),
            },
            "compact_replay_1m_transitions_gb": round(compact_bytes * 1e6 / 1e9, 3),
            "versions": {
                name: importlib.metadata.version(name)
                for name in ("misical-gym", "torch", "stable-baselines3")
            },
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
