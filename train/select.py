"""``misical select``: the next B patches to annotate for one target class, without retraining.

The policy plays one episode of budget B on the store's ``pool`` split: every step it sees
``pool_size`` fresh candidates and picks one, exactly as in training. Nothing is retrained, so a
batch of 10,000 costs 10,000 policy calls over memory-mapped features.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

from misical_gym.atomic import atomic_write_text
from misical_gym.train.agents import HEURISTIC_AGENTS, load_agent, make_agent

FORMATS = ("json", "csv", "coco")


def load_policy(policy: str, env: gym.Env, device: str = "auto", seed: int = 0) -> Any:
    """A heuristic by name, or a saved model: a run directory, or a model file inside one.

    A model file outside a run directory is tried as a DDQN, then as each SB3 algorithm.
    """
    if policy in HEURISTIC_AGENTS:
        return make_agent(policy, env, seed=seed)
    path = Path(policy)
    if not path.exists():
        raise FileNotFoundError(
            f"policy {policy!r} is neither a heuristic ({', '.join(HEURISTIC_AGENTS)}) nor an "
            "existing model path"
        )
    run_dir = path if path.is_dir() else path.parent
    config = run_dir / "config.yaml"
    if config.is_file():
        agent = yaml.safe_load(config.read_text())["agent"]
        summary = json.loads((run_dir / "summary.json").read_text())
        model_path = run_dir / summary["model"] if path.is_dir() else path
        # Selection only scores observations: a network needs no env (whose budget may differ
        # from training's); the supervised policy reads its shapes from one.
        return load_agent(agent, model_path, env if agent == "supervised" else None, device)
    errors = []
    for agent in ("ddqn", "dqn", "qrdqn", "ppo", "a2c", "maskable-ppo"):
        try:
            return load_agent(agent, path, None, device)
        except Exception as exc:
            errors.append(f"{agent}: {type(exc).__name__}")
    raise ValueError(f"{path} is not a model this package can load ({'; '.join(errors)})")


def row_width(model: Any, pool_size: int) -> int | None:
    """Features per candidate the policy was trained on (None for a heuristic)."""
    if hasattr(model, "candidate_shape"):  # the package's DDQN, built for any K
        return int(model.candidate_shape[1])
    space = getattr(model, "observation_space", None)
    if space is None or space.shape is None:
        return None
    return int(np.prod(space.shape)) // pool_size


def candidate_scores(model: Any, obs: np.ndarray, env: gym.Env) -> np.ndarray:
    """The policy's preference for each candidate of one observation (``[K]``)."""
    rows = obs.reshape(env.unwrapped.candidate_shape)
    if hasattr(model, "q_net") and hasattr(model, "_greedy"):  # the package's DDQN
        import torch

        with torch.no_grad():
            q = model.q_net(torch.as_tensor(rows[None], dtype=torch.float32, device=model.device))
        return q[0].cpu().numpy()
    if hasattr(model, "scores"):
        scores = model.scores(rows[None] if not hasattr(model, "model") else obs[None])
        return np.asarray(scores.cpu() if hasattr(scores, "cpu") else scores)[0]
    raise TypeError(f"cannot score candidates with {type(model).__name__}")


def select_patches(
    store: str | os.PathLike[str],
    policy: str,
    target: str | int,
    budget: int,
    *,
    pool_size: int = 32,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Pick ``budget`` pool patches; returns the picks with their image ids, boxes and scores."""
    import misical_gym  # noqa: F401  (registers the ids)

    def make_env(target_onehot: bool) -> gym.Env:
        return gym.make(
            "MiSiCAL-Store",
            root=str(store),
            split="pool",
            budget=budget,
            pool_size=pool_size,
            target_class=target,
            target_onehot=target_onehot,
        )

    env = make_env(target_onehot=False)
    model = load_policy(policy, env, device, seed)
    if (
        row_width(model, pool_size)
        == env.unwrapped.candidate_shape[1] + env.unwrapped.store.num_classes
    ):
        # A goal-conditioned policy (trained on target_class="random") reads the target as a
        # one-hot in every candidate's row.
        env = make_env(target_onehot=True)
    obs, info = env.reset(seed=seed)
    picks: list[dict[str, Any]] = []
    done = False
    while not done:  # truncated: a budget above the pool took every patch
        mask = info["action_mask"].astype(bool)
        scores = np.where(mask, candidate_scores(model, obs, env), -np.inf)
        action = int(np.argmax(scores))
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if info["patch_id"] >= 0:
            picks.append({"patch_id": int(info["patch_id"]), "score": float(scores[action])})
    s = env.unwrapped.store
    ids = np.array([p["patch_id"] for p in picks], dtype=np.int64)
    boxes = s.boxes(ids) if ids.size else np.zeros((0, 4), dtype=np.int64)
    for pick, box, image in zip(picks, boxes, s.patches[ids, 0] if ids.size else [], strict=True):
        pick["image_id"] = s.image_ids[int(image)]
        pick["box"] = [int(v) for v in box]  # y0, x0, y1, x1; end-exclusive
    return {
        "store": str(s.path),
        "policy": policy,
        "target": s.class_names[env.unwrapped.target],
        "target_id": int(env.unwrapped.target),
        "budget": budget,
        "pool_size": pool_size,
        "seed": seed,
        "picks": picks,
    }


def render(selection: dict[str, Any], fmt: str) -> str:
    """The selection as ``json``, ``csv`` or ``coco`` (one image entry per image, one box each)."""
    if fmt == "json":
        return json.dumps(selection, indent=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["rank", "image_id", "patch_id", "y0", "x0", "y1", "x1", "score"])
        for rank, pick in enumerate(selection["picks"]):
            writer.writerow([rank, pick["image_id"], pick["patch_id"], *pick["box"], pick["score"]])
        return out.getvalue()
    if fmt == "coco":
        image_index: dict[str, int] = {}
        images, annotations = [], []
        for rank, pick in enumerate(selection["picks"]):
            if pick["image_id"] not in image_index:
                image_index[pick["image_id"]] = len(images) + 1
                images.append({"id": len(images) + 1, "file_name": pick["image_id"]})
            y0, x0, y1, x1 = pick["box"]
            annotations.append(
                {
                    "id": rank + 1,
                    "image_id": image_index[pick["image_id"]],
                    "category_id": selection["target_id"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                    "score": pick["score"],
                    "attributes": {"patch_id": pick["patch_id"], "rank": rank},
                }
            )
        categories = [{"id": selection["target_id"], "name": selection["target"]}]
        return json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}, indent=1
        )
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def add_select_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="a prepared store")
    parser.add_argument(
        "--policy",
        required=True,
        help=f"a saved model (run directory or file) or a heuristic: {', '.join(HEURISTIC_AGENTS)}",
    )
    parser.add_argument("--target", required=True, help="target class name or index")
    parser.add_argument("--budget", type=int, required=True, help="patches to pick")
    parser.add_argument("--out", type=Path, required=True, help="output file")
    parser.add_argument("--format", default="json", choices=FORMATS)
    parser.add_argument("--pool-size", type=int, default=32, help="candidates per pick (32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def main(args: argparse.Namespace) -> int:
    selection = select_patches(
        args.store,
        args.policy,
        args.target,
        args.budget,
        pool_size=args.pool_size,
        seed=args.seed,
        device=args.device,
    )
    atomic_write_text(args.out, render(selection, args.format))
    print(
        f"{len(selection['picks'])} patches for {selection['target']!r} written to {args.out}",
        file=sys.stderr,
    )
    return 0
