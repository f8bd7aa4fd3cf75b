"""Environment speed on a store of COCO-Stuff 10k's shape, against CartPole-v1 in the same run.

Prints one JSON object. Usage: ``python benchmarks/bench_env.py [--store DIR] [--steps N]``.
Without ``--store`` it writes a random store of COCO-Stuff 10k's shape (10,000 images x 16
patches = 160,000 patches, 171 classes) to a temporary directory first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import misical_gym  # noqa: F401  (registers the environments)
from misical_gym.data.classes import COCO_STUFF_CLASSES
from misical_gym.store import FeatureStore
from misical_gym.testing import write_random_store

MAKE_PROBE = """
import json, sys, time, psutil, gymnasium as gym, misical_gym
process = psutil.Process()
before = process.memory_info().rss
start = time.perf_counter()
env = gym.make("MiSiCAL-Store", root=sys.argv[1], pool_size=32)
env.reset(seed=0)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_growth_bytes": process.memory_info().rss - before,
                  "torch_imported": "torch" in sys.modules}))
"""


def steps_per_second(env: gym.Env, steps: int, seed: int = 0) -> float:
    """Env steps per second over ``steps`` steps of pre-drawn random actions (resets included)."""
    actions = np.random.default_rng(seed).integers(0, env.action_space.n, steps)
    env.reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def vector_steps_per_second(env_id: str, num_envs: int, steps: int, **kwargs) -> float:
    """Env-steps per second (sub-environment steps) of the native vector env."""
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    actions = np.random.default_rng(0).integers(0, env.single_action_space.n, (steps, num_envs))
    env.reset(seed=0)
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    return steps * num_envs / (time.perf_counter() - start)


def gather_env_steps_per_second(root: Path, num_envs: int, steps: int, pool_size: int) -> float:
    """The floor under any batched step: env-steps/s of only gathering ``pool_size`` random
    feature rows per env-step from the store's memory map, ``num_envs`` env-steps at a time
    (no sampling without replacement, no reward, no observation assembly)."""
    features = FeatureStore.open(root).features
    rng = np.random.default_rng(0)
    ids = rng.integers(0, features.shape[0], (steps, num_envs * pool_size))
    out = np.empty((num_envs * pool_size, features.shape[1]), dtype=features.dtype)
    start = time.perf_counter()
    for batch in ids:
        np.take(features, batch, axis=0, out=out)
    return steps * num_envs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="an existing store (default: write one)")
    parser.add_argument("--steps", type=int, default=100_000, help="single-env steps per run")
    parser.add_argument("--vector-envs", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.store
        if root is None:
            root = Path(tmp) / "coco10k-shaped"
            write_random_store(
                root, num_images=10_000, class_names=COCO_STUFF_CLASSES, image_size=(480, 640)
            )
        store_bytes = sum(f.stat().st_size for f in Path(root).iterdir())
        store_patches = FeatureStore.open(root).num_patches
        probe = subprocess.run(
            [sys.executable, "-c", MAKE_PROBE, str(root)],
            capture_output=True,
            text=True,
            check=True,
        )
        make = json.loads(probe.stdout)

        misical = gym.make("MiSiCAL-Store", root=str(root), pool_size=32, budget=32)
        cartpole = gym.make("CartPole-v1")
        steps_per_second(misical, args.steps // 10)  # warm the page cache and the mapping
        results = {"misical": [], "cartpole": []}
        for _ in range(3):  # interleaved so both see the same machine load
            results["misical"].append(steps_per_second(misical, args.steps))
            results["cartpole"].append(steps_per_second(cartpole, args.steps))
        misical_sps = float(np.median(results["misical"]))
        cartpole_sps = float(np.median(results["cartpole"]))
        vector_steps = max(args.steps // args.vector_envs, 200)
        vector_sps = float(
            np.median(
                [
                    vector_steps_per_second(
                        "MiSiCAL-Store", args.vector_envs, vector_steps, root=str(root)
                    )
                    for _ in range(3)
                ]
            )
        )

        gather_sps = float(
            np.median(
                [
                    gather_env_steps_per_second(Path(root), args.vector_envs, vector_steps, 32)
                    for _ in range(3)
                ]
            )
        )

    report = {
        "store": {"patches": store_patches, "bytes": store_bytes},
        "pool_size": 32,
        "misical_steps_per_s": round(misical_sps),
        "cartpole_steps_per_s": round(cartpole_sps),
        "ratio_vs_cartpole": round(misical_sps / cartpole_sps, 3),
        "vector_num_envs": args.vector_envs,
        "vector_env_steps_per_s": round(vector_sps),
        "vector_speedup_vs_single": round(vector_sps / misical_sps, 2),
        # If only reading the candidates' rows is under 10x the single env, no batched step is.
        "gather_only_env_steps_per_s": round(gather_sps),
        "gather_only_speedup_vs_single": round(gather_sps / misical_sps, 2),
        "vector_share_of_gather_only": round(vector_sps / gather_sps, 3),
        "make_seconds": round(make["seconds"], 3),
        "make_rss_growth_bytes": make["rss_growth_bytes"],
        "make_rss_growth_vs_store": round(make["rss_growth_bytes"] / store_bytes, 4),
        "env_path_imported_torch": make["torch_imported"],
        "required": {
            "ratio_vs_cartpole >= 0.25": misical_sps / cartpole_sps >= 0.25,
            "vector_speedup_vs_single >= 10": vector_sps / misical_sps >= 10,
            "make_seconds < 1": make["seconds"] < 1,
            "make_rss_growth < store size": make["rss_growth_bytes"] < store_bytes,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
