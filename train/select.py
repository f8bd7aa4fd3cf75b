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

from misical_gym.agents.policy import CandidatePolicy, play_episode
from misical_gym.atomic import atomic_write_text
from misical_gym.envs.patch_selection import unwrap_misical
from misical_gym.paths import safe_name
from misical_gym.train.agents import HEURISTIC_AGENTS, check_agent, load_agent, make_agent

FORMATS = ("json", "csv", "coco")


def load_policy(policy: str, env: gym.Env, device: str = "auto", seed: int = 0) -> CandidatePolicy:
    """A heuristic by name, or a saved model: a run directory, or a model file inside one.

    A model file outside a run directory is tried as a DDQN, then as each SB3 algorithm.

    Raises:
        FileNotFoundError: ``policy`` is neither a heuristic nor an existing path.
        ValueError: the run directory is damaged, or the file is no model of this package.
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
    if (run_dir / "config.yaml").is_file():
        config, model_file = read_run(run_dir)
        agent = config["agent"]
        model_path = model_file if path.is_dir() else path
        # Selection only scores observations: a network needs no env (whose budget may differ
        # from training's); the supervised policy and the heuristics read shapes from one.
        needs_env = agent == "supervised" or agent in HEURISTIC_AGENTS
        return load_agent(agent, model_path, env if needs_env else None, device)
    errors = []
    for agent in ("ddqn", "dqn", "qrdqn", "ppo", "a2c", "maskable-ppo"):
        try:
            return load_agent(agent, path, None, device)
        except Exception as exc:
            errors.append(f"{agent}: {type(exc).__name__}")
    raise ValueError(f"{path} is not a model this package can load ({'; '.join(errors)})")


def read_run(run_dir: Path) -> tuple[dict[str, Any], Path]:
    """A finished run's ``config.yaml`` and the path of its model file.

    Raises:
        ValueError: the run is incomplete or damaged (no agent, no summary naming the model).
    """
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        agent = config["agent"]
        model_name = json.loads((run_dir / "summary.json").read_text())["model"]
        check_agent(agent)
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ValueError(
            f"{run_dir} is not a complete run of misical train (config.yaml names the "
            f"agent, summary.json the model file): {type(exc).__name__}: {exc}"
        ) from None
    return config, run_dir / safe_name(str(model_name))


def pool_env(
    store: str | os.PathLike[str],
    target: str | int,
    budget: int,
    pool_size: int,
    target_onehot: bool = False,
) -> gym.Env:
    """The env selection plays in: the store's pool split, one target."""
    import misical_gym  # noqa: F401  (registers the ids)

    return gym.make(
        "MiSiCAL-Store",
        root=str(store),
        split="pool",
        budget=budget,
        pool_size=pool_size,
        target_class=target,
        target_onehot=target_onehot,
    )


def select_patches(
    store: str | os.PathLike[str],
    policy: str | CandidatePolicy,
    target: str | int,
    budget: int,
    *,
    pool_size: int = 32,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Pick ``budget`` pool patches; returns the picks with their image ids, boxes and scores.

    ``policy`` is a policy object, or what :func:`load_policy` reads (a heuristic's name, a
    run directory or a model file).
    """
    env = pool_env(store, target, budget, pool_size)
    model = load_policy(policy, env, device, seed) if isinstance(policy, str) else policy
    base = unwrap_misical(env)
    if model.candidate_shape[1] == base.candidate_shape[1] + base.store.num_classes:
        # A goal-conditioned policy (trained on target_class="random") reads the target as a
        # one-hot in every candidate's row.
        env = pool_env(store, target, budget, pool_size, target_onehot=True)
    # Selections have always sent exact ties to the lowest slot; kept so published runs repeat.
    played = play_episode(model, env, seed, break_ties=False)
    picks: list[dict[str, Any]] = [
        {"patch_id": patch, "score": score}
        for patch, score in zip(played.patch_ids, played.scores, strict=True)
    ]
    base = unwrap_misical(env)
    s = base.store
    ids = np.array([p["patch_id"] for p in picks], dtype=np.int64)
    boxes = s.boxes(ids) if ids.size else np.zeros((0, 4), dtype=np.int64)
    for pick, box, image in zip(picks, boxes, s.patches[ids, 0] if ids.size else [], strict=True):
        pick["image_id"] = s.image_ids[int(image)]
        pick["box"] = [int(v) for v in box]  # y0, x0, y1, x1; end-exclusive
    return {
        "store": str(s.path),
        "policy": policy if isinstance(policy, str) else type(policy).__name__,
        "target": s.class_names[base.target],
        "target_id": int(base.target),
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
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
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
        help="a saved model (run directory or file) or a heuristic: "
        f"{', '.join(HEURISTIC_AGENTS)}. DDQN files are read as data only; SB3 model files "
        "go through SB3's loader, which unpickles: load only models you trust",
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
