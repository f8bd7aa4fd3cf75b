"""Seconds to select B = 10,000 patches from a COCO-10k-shaped store (160,000 patches, 171
classes; each image is drawn into init with probability 10 / images, else into the pool), with
no retraining, for several policies, in both modes of ``misical select``: ``episode`` (best of
32 fresh candidates per pick) and ``rank`` (every pool patch scored once, in sets of 32, the
best B kept). Prints one JSON object, with rank's speed-up over episode. A store always has
init images (its segmenter trains on them), and rank mode builds its rows through an env over
init.

Usage: ``python benchmarks/bench_select.py [--budget 10000] [--images 10000]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import gymnasium as gym


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=10_000, help="store images, 16 patches each")
    args = parser.parse_args()
    if args.images < 20:  # about 10 of them go to init, and the pool needs the rest
        parser.error(f"--images must be at least 20, got {args.images}")

    import torch

    from misical_gym.data.classes import COCO_STUFF_CLASSES
    from misical_gym.testing import write_random_store
    from misical_gym.train import make_agent
    from misical_gym.train.agents import default_hyperparams
    from misical_gym.train.select import select_patches

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = write_random_store(
            Path(tmp) / "coco10k-shaped",
            num_images=args.images,
            class_names=COCO_STUFF_CLASSES,
            image_size=(480, 640),
            split_fractions=(10 / args.images, 1 - 10 / args.images, 0.0),  # about 10 init images
        )
        # An untrained DDQN of the network `misical train` gives it (the packaged
        # hyperparameters'): selection cost depends on the network, not on training.
        network = default_hyperparams("ddqn", "MiSiCAL-COCO10k").get("policy_kwargs", {})
        env = gym.make("MiSiCAL-Store", root=str(store.path), split="pool", target_class="skis")
        run = Path(tmp) / "ddqn"
        agent = make_agent("ddqn", env, device="cpu", learning_starts=10, policy_kwargs=network)
        agent.learn(50).save(run / "model")
        (run / "config.yaml").write_text("agent: ddqn\n")
        (run / "summary.json").write_text(json.dumps({"model": "model.zip"}))
        seconds: dict[str, dict[str, float]] = {"episode": {}, "rank": {}}
        for mode, options in (("episode", {}), ("rank", {"include_labelled": True})):
            for policy in ("random", "presence", str(run)):
                start = time.perf_counter()
                selection = select_patches(
                    store.path,
                    policy,
                    "skis",
                    args.budget,
                    device="cpu",
                    seed=0,
                    mode=mode,
                    **options,
                )
                name = "ddqn" if policy == str(run) else policy
                seconds[mode][name] = round(time.perf_counter() - start, 3)
                assert len(selection["picks"]) == args.budget
        pool = int(store.split_ids("pool").size)
    print(
        json.dumps(
            {
                "store_patches": int(store.num_patches),
                "pool_patches": pool,
                "classes": 171,
                "pool_size": 32,
                "budget": args.budget,
                "ddqn_policy_kwargs": network,
                "seconds": seconds,
                "rank_speedup_over_episode": {
                    name: round(seconds["episode"][name] / seconds["rank"][name], 1)
                    for name in seconds["rank"]
                },
                "torch_threads": 1,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
