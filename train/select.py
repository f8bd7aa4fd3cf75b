"""``misical select``: the next B patches to annotate for one target class, without retraining.

Two modes:

- ``episode`` (the default): the policy plays one episode of budget B on the store's ``pool``
  split; every step it sees ``pool_size`` fresh candidates and picks one, exactly as in
  training and in the paper's protocol.
- ``rank``: every candidate patch of the pool is scored once with the policy's own score and
  the best B are kept (:mod:`misical_gym.train.rank`), optionally at most N per image, without
  the patches of earlier picks files, and without labelled patches unless asked.

Nothing is retrained, so a batch of 10,000 costs 10,000 policy calls (episode) or one scoring
pass over the pool (rank) over memory-mapped features.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

from misical_gym.agents.policy import CandidatePolicy, play_episode
from misical_gym.annotations.apply import read_picks
from misical_gym.atomic import atomic_write_text
from misical_gym.envs.patch_selection import unwrap_misical
from misical_gym.paths import safe_name
from misical_gym.store import FeatureStore
from misical_gym.train import yaml_values
from misical_gym.train.agents import HEURISTIC_AGENTS, check_agent, load_agent, make_agent
from misical_gym.train.rank import best_patches, rank_scores

FORMATS = ("json", "csv", "coco", "labelstudio")
MODES = ("episode", "rank")


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
        config = yaml_values.load((run_dir / "config.yaml").read_text())
        agent = config["agent"]
        model_name = json.loads((run_dir / "summary.json").read_text())["model"]
        check_agent(agent)
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ValueError(
            f"{run_dir} is not a complete run of misical train (config.yaml names the "
            f"agent, summary.json the model file): {type(exc).__name__}: {exc}"
        ) from None
    return config, run_dir / safe_name(str(model_name))


def trained_features(policy: str) -> str | list[str]:
    """The ``features=`` the run that ``policy`` names (a run directory or a model file in one)
    was trained with; ``all`` for heuristics, model files outside a run and earlier runs.

    Raises:
        ValueError: the run's config is damaged, or its ``features`` is neither a name nor a
            list of names.
    """
    path = Path(policy)
    run_dir = path if path.is_dir() else path.parent
    if policy in HEURISTIC_AGENTS or not (run_dir / "config.yaml").is_file():
        return "all"
    config, _ = read_run(run_dir)
    env_kwargs = config.get("env_kwargs") or {}
    features = env_kwargs.get("features", "all") if isinstance(env_kwargs, dict) else None
    if isinstance(features, str) or (
        isinstance(features, list) and all(isinstance(f, str) for f in features)
    ):
        return features
    raise ValueError(f"{run_dir / 'config.yaml'}: env_kwargs.features is {features!r:.80}")


def pool_env(
    store: str | os.PathLike[str],
    target: str | int,
    budget: int,
    pool_size: int,
    target_onehot: bool = False,
    features: str | Sequence[str] = "all",
    split: str = "pool",
) -> gym.Env:
    """The env selection plays in: the store's ``split`` (the pool), one target, the policy's
    observation columns (``features``, as it was trained)."""
    import misical_gym  # noqa: F401  (registers the ids)

    return gym.make(
        "MiSiCAL-Store",
        root=str(store),
        split=split,
        budget=budget,
        pool_size=pool_size,
        target_class=target,
        target_onehot=target_onehot,
        features=features,
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
    mode: str = "episode",
    max_per_image: int | None = None,
    exclude: np.ndarray | None = None,
    include_labelled: bool = False,
    features: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Pick ``budget`` pool patches; returns the picks with their image ids, boxes and scores.

    Args:
        store: A prepared store.
        policy: A policy object, or what :func:`load_policy` reads (a heuristic's name, a run
            directory or a model file).
        target: The target class's name or index.
        budget: Patches to pick (fewer when the pool has fewer).
        pool_size: Candidates per pick (episode), patches per scored set (rank).
        seed: Seeds the episode (episode), the sets and the order of ties (rank).
        device: Where a saved network runs.
        mode: ``"episode"`` or ``"rank"`` (see the module's docstring).
        max_per_image: Rank only: at most this many patches of one image.
        exclude: Rank only: store ids never to pick (:func:`read_picks` of earlier picks).
        include_labelled: Rank only: rank labelled patches too (unlabelled ones always are).
        features: The observation columns the policy was trained on (the env's ``features``);
            None: those of the run ``policy`` names (:func:`trained_features`), else ``all``.

    Raises:
        ValueError: an unknown mode, a rank-only option in episode mode, or nothing to rank.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "episode" and (max_per_image is not None or exclude is not None or include_labelled):
        raise ValueError(
            "--max-per-image, --exclude and --include-labelled apply to --mode rank; episode "
            "mode plays the paper's protocol over the whole pool split"
        )
    if max_per_image is not None and max_per_image < 1:
        raise ValueError(f"--max-per-image must be positive, got {max_per_image}")
    if features is None:
        features = trained_features(policy) if isinstance(policy, str) else "all"
    # Rank mode only builds rows and reads no reward, and a pool still to be annotated may hold
    # no labelled patch, which a pool env refuses: its env is made over init, always labelled.
    split = "pool" if mode == "episode" else "init"
    env = pool_env(store, target, budget, pool_size, features=features, split=split)
    model = load_policy(policy, env, device, seed) if isinstance(policy, str) else policy
    base = unwrap_misical(env)
    if model.candidate_shape[1] == base.candidate_shape[1] + base.store.num_classes:
        # A goal-conditioned policy (trained on target_class="random") reads the target as a
        # one-hot in every candidate's row.
        env = pool_env(
            store, target, budget, pool_size, target_onehot=True, features=features, split=split
        )
    base = unwrap_misical(env)
    s = base.store
    if mode == "episode":
        # Selections have always sent exact ties to the lowest slot; kept so published runs
        # repeat.
        played = play_episode(model, env, seed, break_ties=False)
        patch_ids, scores = played.patch_ids, played.scores
        target_id = int(base.target)
    else:
        if base.fixed_target is None:
            raise ValueError("rank mode ranks for one class: name it, not 'random'")
        target_id = base.fixed_target
        candidates = _rank_candidates(s, exclude, include_labelled)
        all_scores = rank_scores(
            model,
            base.builder,
            candidates,
            target_id,
            pool_size=pool_size,
            seed=seed,
        )
        best = best_patches(
            s, candidates, all_scores, budget, max_per_image=max_per_image, seed=seed
        )
        patch_ids, scores = candidates[best].tolist(), all_scores[best].tolist()
    picks: list[dict[str, Any]] = [
        {"patch_id": patch, "score": score} for patch, score in zip(patch_ids, scores, strict=True)
    ]
    ids = np.array([p["patch_id"] for p in picks], dtype=np.int64)
    boxes = s.boxes(ids) if ids.size else np.zeros((0, 4), dtype=np.int64)
    images = [int(i) for i in (s.patches[ids, 0] if ids.size else [])]
    image_root, file_names = _image_files(s, images)
    for pick, box, image in zip(picks, boxes, images, strict=True):
        pick["image_id"] = s.image_ids[image]
        pick["file_name"] = file_names[image]
        pick["image_size"] = [int(v) for v in s.image_sizes[image]]  # height, width
        pick["box"] = [int(v) for v in box]  # y0, x0, y1, x1 in original pixels; end-exclusive
    return {
        "store": str(s.path),
        "store_id": s.path.name,
        "store_fingerprint": s.fingerprint,
        "image_root": None if image_root is None else str(image_root),
        "policy": policy if isinstance(policy, str) else type(policy).__name__,
        "target": s.class_names[target_id],
        "target_id": target_id,
        "mode": mode,
        "budget": budget,
        "pool_size": pool_size,
        "seed": seed,
        "picks": picks,
    }


def _image_files(store: FeatureStore, images: list[int]) -> tuple[Path | None, dict[int, str]]:
    """The folder the images' files lie under and each image's file name relative to it.

    The names are the dataset's own (:func:`~misical_gym.data.store_image_file`); images of
    several folders are named relative to the folders' common parent. A store that cannot
    reach its images names them by their ids, under no folder, with a warning when its
    dataset moved: the selection itself needs no image.
    """
    import warnings

    from misical_gym import data
    from misical_gym.errors import DatasetError, StoreError

    try:
        files = {image: data.store_image_file(store, image) for image in dict.fromkeys(images)}
    except (DatasetError, StoreError) as exc:
        warnings.warn(
            f"the picks name images by their ids, not file names: {exc}", UserWarning, stacklevel=3
        )
        files = {image: (None, store.image_ids[image]) for image in dict.fromkeys(images)}
    folders = {folder for folder, _ in files.values()}
    if not files or None in folders:
        return None, {image: store.image_ids[image] for image in files}
    root = Path(os.path.commonpath([str(folder) for folder in folders]))
    return root, {
        image: (folder / name).relative_to(root).as_posix()  # type: ignore[operator]
        for image, (folder, name) in files.items()
    }


def _rank_candidates(
    store: FeatureStore, exclude: np.ndarray | None, include_labelled: bool
) -> np.ndarray:
    """The pool patches rank mode scores: unlabelled ones (and labelled ones if asked), less
    ``exclude``."""
    candidates = store.split_ids("pool")
    labelled = np.asarray(store.labelled)[candidates]
    if not include_labelled:
        candidates = candidates[~labelled]
    if exclude is not None:
        candidates = candidates[~np.isin(candidates, exclude)]
    if candidates.size == 0:
        what = "every pool patch is labelled" if not include_labelled else "the pool is empty"
        raise ValueError(
            f"nothing to rank in {store.path}: {what}"
            + (" or excluded" if exclude is not None else "")
            + (
                "; pass --include-labelled to rank labelled patches too"
                if not include_labelled and labelled.any()
                else ""
            )
        )
    return candidates


def render(selection: dict[str, Any], fmt: str, *, image_root_url: str | None = None) -> str:
    """The selection as ``json``, ``csv``, ``coco`` or ``labelstudio``.

    Every format names each image by the dataset's own file name, gives each patch's box in
    original pixels and carries the store's id and fingerprint. ``coco`` has one image entry
    per image and one box per pick; ``labelstudio`` one task per image, its picks pre-drawn
    (:func:`~misical_gym.annotations.labelstudio.export_labelstudio`, which takes
    ``image_root_url``).
    """
    if fmt == "json":
        return json.dumps(selection, indent=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            [
                "rank", "image_id", "file_name", "patch_id", "y0", "x0", "y1", "x1", "score",
                "store_id", "store_fingerprint",
            ]
        )  # fmt: skip
        for rank, pick in enumerate(selection["picks"]):
            writer.writerow(
                [
                    rank, pick["image_id"], pick["file_name"], pick["patch_id"], *pick["box"],
                    pick["score"], selection["store_id"], selection["store_fingerprint"],
                ]
            )  # fmt: skip
        return out.getvalue()
    if fmt == "coco":
        image_index: dict[str, int] = {}
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for rank, pick in enumerate(selection["picks"]):
            if pick["image_id"] not in image_index:
                image_index[pick["image_id"]] = len(images) + 1
                height, width = pick["image_size"]
                images.append(
                    {
                        "id": len(images) + 1,
                        "file_name": pick["file_name"],
                        "height": height,
                        "width": width,
                        "misical_image_id": pick["image_id"],
                    }
                )
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
        info = {
            "description": f"misical select: patches to annotate for {selection['target']!r}",
            "store_id": selection["store_id"],
            "store_fingerprint": selection["store_fingerprint"],
            "image_root": selection["image_root"],
        }
        return json.dumps(
            {"info": info, "images": images, "annotations": annotations, "categories": categories},
            indent=1,
        )
    if fmt == "labelstudio":
        from misical_gym.annotations.labelstudio import export_labelstudio

        return export_labelstudio(selection, image_root_url=image_root_url)
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
    parser.add_argument(
        "--format",
        default="json",
        choices=FORMATS,
        help="json (default), csv, coco (one box per pick), or labelstudio (a Label Studio "
        "import file: one task per image, the picks pre-drawn); every format names images by "
        "their file names, boxes in original pixels, and carries the store's id and fingerprint",
    )
    parser.add_argument(
        "--image-root-url",
        default=None,
        metavar="URL",
        help="labelstudio: the URL that serves the image folder (image_root in the JSON "
        "format); by default images are Label Studio local files (/data/local-files/?d=NAME)",
    )
    parser.add_argument(
        "--mode",
        default="episode",
        choices=MODES,
        help="episode (the default): the policy plays one episode, best of --pool-size fresh "
        "candidates per pick, the protocol it was trained in and the paper measured, so "
        "published selections repeat exactly; rank: score every pool patch once with the "
        "policy's own score (sets of --pool-size for pooled-context networks, seeded) and "
        "keep the best B. Neither is always better (see the README), hence no silent switch",
    )
    parser.add_argument(
        "--max-per-image",
        type=int,
        default=None,
        metavar="N",
        help="rank mode: at most N patches of one image",
    )
    parser.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="rank mode: never pick the patches of this earlier picks file (JSON of this "
        "store; repeat for several)",
    )
    parser.add_argument(
        "--include-labelled",
        action="store_true",
        help="rank mode: rank patches whose labels are known too (by default only "
        "unlabelled patches are ranked: they are the ones worth annotating)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=32,
        help="candidates per pick (episode) or patches per scored set (rank) (32)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--preview",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="also write a contact sheet of the first 100 picks in rank order: each patch "
        "outlined in the image around it, with its score and image name (needs the store's "
        "images)",
    )


def main(args: argparse.Namespace) -> int:
    if args.image_root_url is not None and args.format != "labelstudio":
        raise ValueError("--image-root-url applies to --format labelstudio")
    exclude = None
    if args.exclude:
        store = FeatureStore.open(args.store)
        exclude = np.concatenate([read_picks(path, store) for path in args.exclude])
    selection = select_patches(
        args.store,
        args.policy,
        args.target,
        args.budget,
        pool_size=args.pool_size,
        seed=args.seed,
        device=args.device,
        mode=args.mode,
        max_per_image=args.max_per_image,
        exclude=exclude,
        include_labelled=args.include_labelled,
    )
    atomic_write_text(args.out, render(selection, args.format, image_root_url=args.image_root_url))
    if args.preview is not None:
        from misical_gym.train.preview import write_preview

        write_preview(args.preview, FeatureStore.open(args.store), selection)
        print(f"preview of the picks written to {args.preview}", file=sys.stderr)
    print(
        f"{len(selection['picks'])} patches for {selection['target']!r} written to {args.out}",
        file=sys.stderr,
    )
    return 0
