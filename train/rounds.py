"""``misical rounds``: R rounds of the annotation loop, a dataset's own labels as the annotator.

Each round ranks the pool's unlabelled patches with the policy and picks B of them (``select
--mode rank``, never an earlier round's picks), labels the picks from held-back annotations
(``label --picks``'s code), and reports the target pixels they hold. Before the next round the
policy learns on the pool patches labelled so far (``train --resume --online-steps``'s code).
Random runs the same rounds in its own copy of the store, its picks labelled the same way, so
both arms' numbers come out of ``label`` and neither sees the other's labels.

Everything is written under ``--out``: the two copies of the store (the user's store is never
changed), the runs, each round's picks, and ``rounds.json``, ``rounds.csv`` and ``summary.md``.
A round is done when its ``result.json`` exists and is not redone; a killed round is finished
from its picks file, written before its labels (labelling again is idempotent), so a killed
``rounds`` picks up where it stopped. ``--rounds`` may grow between runs; any other setting may
not.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.annotations import FORMATS, Annotation, read_annotations
from misical_gym.annotations.apply import label_patches, read_picks
from misical_gym.atomic import atomic_directory, atomic_write_text
from misical_gym.errors import MisicalError
from misical_gym.runtime import cpu_threads
from misical_gym.store import MANIFEST, FeatureStore
from misical_gym.train.agents import SB3_AGENTS
from misical_gym.train.run import ONLINE_AGENTS, continue_online, run_training
from misical_gym.train.select import render, select_patches

RANKING_HEURISTICS: tuple[str, ...] = ("presence", "bald", "entropy")
"""Heuristics a round can rank with; they learn nothing, so they are never updated. Not the
oracle: it ranks by counts, and an unlabelled patch's are unknown."""
ROUND_AGENTS: tuple[str, ...] = (*ONLINE_AGENTS, *RANKING_HEURISTICS)
ARMS: tuple[str, ...] = ("policy", "random")
ENV_ID = "MiSiCAL-Store"


@dataclass(frozen=True)
class RoundsConfig:
    """What determines the rounds' results (the settings a resumed ``--out`` must repeat).

    Attributes:
        store: The prepared store the copies are made of.
        annotations: Annotation files or folders of the pool's held-back labels.
        annotation_format: Their format (one of :data:`~misical_gym.annotations.FORMATS`).
        target: The target class's name.
        budget: Patches picked per round and arm.
        agent: The policy: a learning agent (trained on init, updated each round) or a ranking
            heuristic.
        pretrain_steps: The learning agent's env steps on init.
        online_steps: Its env steps on the pool's labelled patches before each later round.
        pool_size: Patches per scored set (rank mode's K).
        max_per_image: At most this many picks of one image per round (None: no cap).
        seed: Seeds training and each round's ranking (round r uses ``seed + r``).
        hide_pool_labels: The copies' pool patches start unlabelled (a store prepared with its
            pool labelled then plays an unlabelled one; only the annotations bring labels back).
    """

    store: Path
    annotations: tuple[Path, ...]
    annotation_format: str
    target: str
    budget: int = 100
    agent: str = "ddqn"
    pretrain_steps: int = 3000
    online_steps: int = 1000
    pool_size: int = 32
    max_per_image: int | None = None
    seed: int = 0
    hide_pool_labels: bool = False

    @property
    def learns(self) -> bool:
        return self.agent in ONLINE_AGENTS


def check_config(config: RoundsConfig, rounds: int) -> FeatureStore:
    """Refuse bad settings before any work; returns the source store, opened.

    Raises:
        ValueError: a setting is out of range, or the pool has nothing to annotate.
        FileNotFoundError: an annotation path does not exist.
        StoreError: the store is missing or damaged.
    """
    positive = {"--rounds": rounds, "--budget": config.budget, "--pool-size": config.pool_size}
    if config.learns:
        positive["--pretrain-steps"] = config.pretrain_steps
    for flag, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    if config.online_steps < 0:
        raise ValueError(f"--online-steps must be non-negative, got {config.online_steps}")
    if config.max_per_image is not None and config.max_per_image < 1:
        raise ValueError(f"--max-per-image must be positive, got {config.max_per_image}")
    if config.seed < 0:
        raise ValueError(f"--seed must be non-negative, got {config.seed}")
    if config.agent not in ROUND_AGENTS:
        raise ValueError(
            f"--agent {config.agent!r} cannot run rounds; choose one of {', '.join(ROUND_AGENTS)}"
            " (the supervised ablation is not updated online, the oracle reads unknown counts)"
        )
    if config.annotation_format not in FORMATS:
        raise ValueError(
            f"unknown annotation format {config.annotation_format!r}; choose one of "
            f"{', '.join(FORMATS)}"
        )
    for path in config.annotations:
        if not path.exists():
            raise FileNotFoundError(f"--annotations {path} not found")
    store = FeatureStore.open(config.store)
    store.class_index(config.target)
    if not config.hide_pool_labels and store.split_ids("pool", labelled=False).size == 0:
        raise ValueError(
            f"every pool patch of {store.path} is labelled: nothing to annotate. Prepare it "
            "with --unlabelled DIR, or pass --hide-pool-labels to hold its pool's labels back"
        )
    return store


def run_rounds(
    config: RoundsConfig,
    rounds: int,
    out: str | Path,
    *,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) ``rounds`` rounds in ``out``; returns every round's record.

    Raises:
        ValueError: bad settings, or ``out`` holds rounds made with other settings.
    """
    source = check_config(config, rounds)
    # By name: --target 9 and --target Pedestrian are the same rounds.
    config = replace(config, target=source.class_names[source.class_index(config.target)])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**_jsonable(config), "store_fingerprint": source.fingerprint}
    _check_settings(out / "config.json", settings)
    stores = {
        arm: _copy_store(source, out / arm / "store", config.hide_pool_labels) for arm in ARMS
    }
    with cpu_threads(threads):
        records = _play_rounds(config, rounds, out, stores, device, threads, progress)
    write_reports(out, config, records)
    return records


def _play_rounds(
    config: RoundsConfig,
    rounds: int,
    out: Path,
    stores: dict[str, Path],
    device: str,
    threads: int | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """Pretrain once; then per round: update the policy, pick, label and record each arm."""
    policy: str = config.agent
    if config.learns:
        policy = str(_pretrained(config, stores["policy"], out, device, threads, progress))
    records: list[dict[str, Any]] = []
    for r in range(1, rounds + 1):
        folder = out / f"round_{r}"
        done = folder / "result.json"
        started = done.is_file() or any((folder / f"{a}_picks.json").is_file() for a in ARMS)
        if not started and not _picks_left(stores, r, out):
            print(
                f"misical rounds: no unlabelled pool patch is left to pick after round {r - 1}; "
                "stopping there",
                file=sys.stderr,
            )
            break
        if config.learns and r > 1 and config.online_steps:
            update = out / "runs" / f"update_{r - 1}"
            policy = str(_updated(Path(policy), config, update, device, threads, progress))
        if done.is_file():
            records.append(json.loads(done.read_text(encoding="utf-8")))
            continue
        start = time.time()
        folder.mkdir(exist_ok=True)
        record: dict[str, Any] = {"round": r, "target": config.target, "policy_source": policy}
        for arm, ranker in (("policy", policy), ("random", "random")):
            record[arm] = _play_round(config, arm, ranker, stores[arm], r, out, device)
        record["seconds"] = round(time.time() - start, 1)
        atomic_write_text(done, json.dumps(record, indent=1))
        records.append(record)
        write_reports(out, config, records)
    return records


def _play_round(
    config: RoundsConfig,
    arm: str,
    ranker: str,
    store_path: Path,
    r: int,
    out: Path,
    device: str,
) -> dict[str, Any]:
    """One arm's round: pick (unless its picks file exists), label the picks, count them."""
    picks = out / f"round_{r}" / f"{arm}_picks.json"
    if not picks.is_file():
        exclude = _earlier_picks(FeatureStore.open(store_path), arm, r, out)
        selection = select_patches(
            store_path,
            ranker,
            config.target,
            config.budget,
            pool_size=config.pool_size,
            seed=config.seed + r,
            device=device,
            mode="rank",
            max_per_image=config.max_per_image,
            exclude=exclude if exclude.size else None,
        )
        atomic_write_text(picks, render(selection, "json"))
    store = FeatureStore.open(store_path)
    ids = read_picks(picks, store)
    summary = label_patches(store, _annotations(config, store), ids)
    store = FeatureStore.open(store_path)
    target = store.class_index(config.target)
    labelled = np.asarray(store.labelled)[ids]
    pixels = np.asarray(store.counts)[ids, target] * labelled
    return {
        "picks": int(ids.size),
        "labelled": int(labelled.sum()),
        "newly_labelled": int(summary["labelled"]),
        "target_pixels": int(pixels.sum()),
        "hits": int((pixels > 0).sum()),
        "labelled_pool_patches": int(store.split_ids("pool", labelled=True).size),
    }


def _earlier_picks(store: FeatureStore, arm: str, r: int, out: Path) -> np.ndarray:
    """The patch ids an arm picked before round ``r``."""
    earlier = [read_picks(out / f"round_{k}" / f"{arm}_picks.json", store) for k in range(1, r)]
    return np.concatenate(earlier) if earlier else np.zeros(0, dtype=np.int64)


def _picks_left(stores: dict[str, Path], r: int, out: Path) -> bool:
    """Whether every arm's pool holds an unlabelled patch that no earlier round picked."""
    for arm, path in stores.items():
        store = FeatureStore.open(path)
        unlabelled = store.split_ids("pool", labelled=False)
        if np.setdiff1d(unlabelled, _earlier_picks(store, arm, r, out)).size == 0:
            return False
    return True


def _annotations(config: RoundsConfig, store: FeatureStore) -> list[Annotation]:
    return [
        annotation
        for path in config.annotations
        for annotation in read_annotations(path, config.annotation_format, store)
    ]


def _pretrained(
    config: RoundsConfig,
    store: Path,
    out: Path,
    device: str,
    threads: int | None,
    progress: bool,
) -> Path:
    """The learning agent trained on the policy copy's init (resumed or reused when there)."""
    logdir = out / "runs"
    # misical train's run folder layout (<logdir>/<env>/<target>/<agent>_<seed>).
    run_dir = logdir / ENV_ID / config.target / f"{config.agent}_{config.seed}"
    if (run_dir / "summary.json").is_file():
        return run_dir
    return run_training(
        config.agent,
        ENV_ID,
        env_kwargs={"root": str(store.resolve())},
        target=config.target,
        pretrain_steps=config.pretrain_steps,
        online_steps=0,
        seed=config.seed,
        logdir=logdir,
        device=device,
        progress=progress,
        threads=threads,
    ).run_dir


def _updated(
    run: Path,
    config: RoundsConfig,
    out_dir: Path,
    device: str,
    threads: int | None,
    progress: bool,
) -> Path:
    """``run`` updated on the pool labelled so far, in ``out_dir`` (reused when finished)."""
    if (out_dir / "summary.json").is_file():
        return out_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)  # this command's own update, killed before it finished
    return continue_online(
        run, config.online_steps, out=out_dir, device=device, progress=progress, threads=threads
    ).run_dir


def _copy_store(source: FeatureStore, path: Path, hide_pool_labels: bool) -> Path:
    """A copy of ``source`` at ``path`` (made once, atomically), its pool hidden if asked."""
    if (path / MANIFEST).is_file():
        return path
    with atomic_directory(path) as tmp:
        shutil.copytree(source.path, tmp, dirs_exist_ok=True)
        if hide_pool_labels:
            copy = FeatureStore.open(tmp)
            pool = copy.split_ids("pool")
            counts, labelled = np.array(copy.counts), np.array(copy.labelled)
            counts[pool], labelled[pool] = 0, False  # unknown counts, as prepare writes them
            copy.update(counts=counts, labelled=labelled)
    return path


def _jsonable(config: RoundsConfig) -> dict[str, Any]:
    fields = asdict(config)
    fields["store"] = str(Path(config.store).resolve())
    fields["annotations"] = [str(Path(p).resolve()) for p in config.annotations]
    return fields


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Write the settings on the first run; refuse a later run with other settings."""
    if not path.is_file():
        atomic_write_text(path, json.dumps(settings, indent=1))
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MisicalError(f"{path}: cannot read it as JSON ({exc})") from None
    changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
    if changed:
        raise ValueError(
            f"{path.parent} holds rounds made with other settings ({', '.join(changed)} differ); "
            "only --rounds may change between runs: choose another --out"
        )


ROUND_FIELDS = ("picks", "labelled", "target_pixels", "hits")


def write_reports(out: Path, config: RoundsConfig, records: Sequence[dict[str, Any]]) -> None:
    """``rounds.json``, ``rounds.csv`` (one row per round and arm) and ``summary.md``."""
    atomic_write_text(out / "rounds.json", json.dumps(list(records), indent=1))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["round", "arm", *ROUND_FIELDS, "cumulative_target_pixels"])
    totals = dict.fromkeys(ARMS, 0)
    table = []
    for record in records:
        for arm in ARMS:
            totals[arm] += record[arm]["target_pixels"]
            writer.writerow(
                [record["round"], arm, *(record[arm][k] for k in ROUND_FIELDS), totals[arm]]
            )
        table.append(
            f"| {record['round']} | {record['policy']['target_pixels']:,} | "
            f"{record['random']['target_pixels']:,} | {totals['policy']:,} | "
            f"{totals['random']:,} | {record['policy']['hits']} | {record['random']['hits']} |"
        )
    atomic_write_text(out / "rounds.csv", buffer.getvalue())
    update = (
        f"trained {config.pretrain_steps} env steps on init, then {config.online_steps} on the "
        "pool's labelled patches before each later round"
        if config.learns
        else "a heuristic: not updated"
    )
    lines = [
        f"# misical rounds: {config.target}",
        "",
        f"{len(records)} rounds of {config.budget} patches from `{Path(config.store).name}`'s "
        f"pool, ranked by `{config.agent}` ({update}) against random, each in its own copy of "
        "the store; every round's picks are labelled from the held-back annotations and "
        "excluded from later rounds. Target pixels of the picks:",
        "",
        f"| round | {config.agent} | random | {config.agent}, total | random, total | "
        f"{config.agent} hits | random hits |",
        "|---|---|---|---|---|---|---|",
        *table,
        "",
    ]
    atomic_write_text(out / "summary.md", "\n".join(lines))


def add_rounds_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="a prepared store (not changed)")
    parser.add_argument(
        "--annotations",
        type=Path,
        action="append",
        required=True,
        metavar="PATH",
        help="the pool's held-back annotations, playing the annotator (repeat for several "
        "folders, e.g. CamVid's trainannot and valannot)",
    )
    parser.add_argument("--format", default="masks", choices=FORMATS, help="their format (masks)")
    parser.add_argument("--target", required=True, help="target class name or index")
    parser.add_argument("--rounds", type=int, default=3, help="rounds R (3; may grow on resume)")
    parser.add_argument("--budget", type=int, default=100, help="patches per round, B (100)")
    parser.add_argument(
        "--agent",
        default="ddqn",
        choices=ROUND_AGENTS,
        help="the policy (ddqn): a learning agent (ddqn, " + ", ".join(SB3_AGENTS) + ") is "
        "trained on init, then updated before each round; a heuristic only ranks",
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=3000, help="learning agent: env steps on init (3000)"
    )
    parser.add_argument(
        "--online-steps",
        type=int,
        default=1000,
        help="learning agent: env steps on the pool's labelled patches before each later round "
        "(1000; 0: never updated)",
    )
    parser.add_argument("--pool-size", type=int, default=32, help="patches per scored set (32)")
    parser.add_argument(
        "--max-per-image", type=int, default=None, metavar="N", help="at most N picks per image"
    )
    parser.add_argument(
        "--hide-pool-labels",
        action="store_true",
        help="simulate an unlabelled pool: the copies' pool patches start with unknown counts, "
        "which only the annotations bring back (for a store prepared with its pool labelled)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: store copies, runs, picks, rounds.json, rounds.csv, summary.md; "
        "run again to resume",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: half the cores)")


def main(args: argparse.Namespace) -> int:
    config = RoundsConfig(
        store=args.store,
        annotations=tuple(args.annotations),
        annotation_format=args.format,
        target=str(args.target),
        budget=args.budget,
        agent=args.agent,
        pretrain_steps=args.pretrain_steps,
        online_steps=args.online_steps,
        pool_size=args.pool_size,
        max_per_image=args.max_per_image,
        seed=args.seed,
        hide_pool_labels=args.hide_pool_labels,
    )
    run_rounds(config, args.rounds, args.out, device=args.device, threads=args.threads)
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    print(f"rounds written to {args.out}", file=sys.stderr)
    return 0
