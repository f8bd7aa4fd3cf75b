"""Prioritized replay throughput: one sample(256) plus one update_priorities(256), per second.

Each buffer is first filled to its capacity (1,000,000 by default) with observations of shape
(4,); then the three implementations take turns, one timed block each per repeat, so that load
from other processes hits them alike. Throughputs are medians over repeats, ratios medians of the
per-repeat ratios. Peers:

- cpprb's ``PrioritizedReplayBuffer`` (C++ segment tree);
- TorchRL's ``PrioritizedReplayBuffer`` over a ``LazyTensorStorage`` (C++ segment tree).

A peer that is not installed (``pip install misical-gym[bench]``) is skipped with a note. Prints
one JSON object.

Run: ``python benchmarks/bench_replay.py [--capacity N] [--repeats R] [--iterations I]``
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from misical_gym.agents import NStepPrioritizedReplayBuffer

OBS_SHAPE = (4,)
NUM_ACTIONS = 8
EPISODE_LENGTH = 32
ALPHA = 0.6
BETA = 0.4
FILL_CHUNK = 100_000

Step = Callable[[int], None]


def make_ours(capacity: int, batch_size: int, td_pool: list[np.ndarray]) -> Step:
    """Fill through ``add``, one env step at a time, in truncated episodes."""
    buffer = NStepPrioritizedReplayBuffer(capacity, OBS_SHAPE, NUM_ACTIONS, alpha=ALPHA)
    rng = np.random.default_rng(0)
    observations = rng.random((EPISODE_LENGTH + 1, *OBS_SHAPE), dtype=np.float32)
    actions = rng.integers(NUM_ACTIONS, size=EPISODE_LENGTH)
    rewards = rng.random(EPISODE_LENGTH)
    # Each episode takes EPISODE_LENGTH + 1 slots: its steps plus its final observation.
    for _ in range(-(-capacity // (EPISODE_LENGTH + 1))):
        for t in range(EPISODE_LENGTH):
            last = t == EPISODE_LENGTH - 1
            buffer.add(observations[t], actions[t], rewards[t], observations[t + 1], False, last)
    sample_rng = np.random.default_rng(1)

    def step(i: int) -> None:
        batch = buffer.sample(batch_size, BETA, sample_rng)
        buffer.update_priorities(batch.indices, td_pool[i % len(td_pool)])

    return step


def make_cpprb(capacity: int, batch_size: int, td_pool: list[np.ndarray]) -> Step:
    import cpprb

    env_dict = {
        "obs": {"shape": OBS_SHAPE},
        "act": {"dtype": np.int64},
        "rew": {},
        "next_obs": {"shape": OBS_SHAPE},
        "done": {},
    }
    buffer = cpprb.PrioritizedReplayBuffer(capacity, env_dict, alpha=ALPHA)
    rng = np.random.default_rng(0)
    for start in range(0, capacity, FILL_CHUNK):
        n = min(FILL_CHUNK, capacity - start)
        buffer.add(
            obs=rng.random((n, *OBS_SHAPE)),
            act=rng.integers(NUM_ACTIONS, size=n),
            rew=rng.random(n),
            next_obs=rng.random((n, *OBS_SHAPE)),
            done=np.zeros(n),
        )

    def step(i: int) -> None:
        batch = buffer.sample(batch_size, beta=BETA)
        buffer.update_priorities(batch["indexes"], np.abs(td_pool[i % len(td_pool)]))

    return step


def nothing_to_prepare() -> list[str]:
    return []


def import_torchrl() -> list[str]:
    """Import TorchRL, loading its compiled extension with lazy symbol binding.

    TorchRL wheels are built against one torch release and fail to load under another when the
    C++ ABI moved. Lazy binding defers symbol resolution to first use, so the segment trees (which
    use no moved symbol) still load. Returns notes on what happened.
    """
    import ctypes

    import torch  # noqa: F401  (its libraries must be loaded before the extension's)

    notes = []
    extension = importlib.util.find_spec("torchrl._torchrl")
    if extension is not None and extension.origin is not None:
        try:
            ctypes.CDLL(extension.origin, mode=os.RTLD_NOW)
        except OSError as error:
            reason = "undefined symbol" if "undefined symbol" in str(error) else str(error)
            notes.append(
                f"torchrl {version('torchrl')}'s compiled extension does not load under torch "
                f"{version('torch')} ({reason}: a C++ ABI mismatch); loaded with lazy symbol "
                "binding instead, under which its segment trees work"
            )
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_LAZY)
    try:
        import torchrl.data  # noqa: F401
    finally:
        sys.setdlopenflags(flags)
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    return notes


def make_torchrl(capacity: int, batch_size: int, td_pool: list[np.ndarray]) -> Step:
    import torch
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, PrioritizedReplayBuffer

    buffer = PrioritizedReplayBuffer(
        alpha=ALPHA, beta=BETA, storage=LazyTensorStorage(capacity), batch_size=batch_size
    )
    generator = torch.Generator().manual_seed(0)
    for start in range(0, capacity, FILL_CHUNK):
        n = min(FILL_CHUNK, capacity - start)
        data = {
            "obs": torch.rand(n, *OBS_SHAPE, generator=generator),
            "action": torch.randint(NUM_ACTIONS, (n,), generator=generator),
            "reward": torch.rand(n, generator=generator),
            "next_obs": torch.rand(n, *OBS_SHAPE, generator=generator),
            "done": torch.zeros(n, dtype=torch.bool),
        }
        buffer.extend(TensorDict(data, batch_size=[n]))
    td_tensors = [torch.from_numpy(np.abs(td).astype(np.float32)) for td in td_pool]

    def step(i: int) -> None:
        _, info = buffer.sample(return_info=True)
        buffer.update_priority(info["index"], td_tensors[i % len(td_tensors)])

    return step


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=400, help="sample+update per block")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    rng = np.random.default_rng(2)
    td_pool = [rng.normal(size=args.batch_size) for _ in range(16)]
    steps: dict[str, Step] = {}
    skipped: dict[str, str] = {}
    notes: list[str] = []
    fill_s: dict[str, float] = {}
    peers: dict[str, tuple[str, Callable[[], list[str]], Callable[..., Step]]] = {
        "misical": ("misical-gym", nothing_to_prepare, make_ours),
        "cpprb": ("cpprb", nothing_to_prepare, make_cpprb),
        "torchrl": ("torchrl", import_torchrl, make_torchrl),
    }
    for name, (distribution, prepare, make) in peers.items():
        if version(distribution) is None:
            skipped[name] = f"{distribution} is not installed (pip install misical-gym[bench])"
            continue
        try:
            notes += prepare()
            start = time.perf_counter()
            steps[name] = make(args.capacity, args.batch_size, td_pool)
            fill_s[name] = round(time.perf_counter() - start, 2)
        except (ImportError, RuntimeError) as error:
            skipped[name] = f"{distribution} is installed but unusable: {error}"

    for step in steps.values():  # warm-up: numba's compiled functions, torch's first calls
        for i in range(50):
            step(i)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for i in range(args.iterations):
                step(i)
            rates[name].append(args.iterations / (time.perf_counter() - start))
    ops = {name: round(statistics.median(values)) for name, values in rates.items()}
    # Median of the per-repeat ratios: each pair of blocks ran back to back, under similar load.
    ratios = {
        f"vs_{peer}": round(
            statistics.median(a / b for a, b in zip(rates["misical"], values, strict=True)), 2
        )
        for peer, values in rates.items()
        if peer != "misical"
    }
    required = {"vs_cpprb": 1.5, "vs_torchrl": 3.0}
    result = {
        "benchmark": "replay sample(batch)+update_priorities(batch) per second",
        "capacity": args.capacity,
        "batch_size": args.batch_size,
        "obs_shape": list(OBS_SHAPE),
        "setup": {
            "misical": "NStepPrioritizedReplayBuffer, n_step=3 with action masks, filled by add() "
            f"in truncated episodes of {EPISODE_LENGTH} steps",
            "cpprb": "PrioritizedReplayBuffer over obs, act, rew, next_obs, done",
            "torchrl": "PrioritizedReplayBuffer over a LazyTensorStorage of the same fields",
        },
        "alpha": ALPHA,
        "beta": BETA,
        "repeats": args.repeats,
        "iterations_per_repeat": args.iterations,
        "ops_per_s": ops,
        "ops_per_s_all_repeats": {
            name: [round(v) for v in values] for name, values in rates.items()
        },
        "ratios": ratios,
        "required": required,
        "meets_required": {
            key: ratios[key] >= bound for key, bound in required.items() if key in ratios
        },
        "fill_s": fill_s,
        "skipped": skipped,
        "notes": notes,
        "versions": {
            d: version(d) for d in ("numpy", "numba", "torch", "cpprb", "torchrl", "tensordict")
        },
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
