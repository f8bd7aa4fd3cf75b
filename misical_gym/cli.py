"""The ``misical`` command line.

Each subcommand is one ``_add_<name>`` function that declares its arguments and names the
function that runs it. Heavy modules (torch, the agents) are imported only inside those
functions, so ``misical --help`` and ``import misical_gym.cli`` stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from misical_gym.errors import MisicalError

Command = Callable[[argparse.Namespace], int | None]
# Problems with the paths a user gave: an error message, not a traceback.
_PATH_ERRORS = (
    FileExistsError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``misical`` with ``argv``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.run(args) or 0)
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at exit
        return status
    except BrokenPipeError:
        # The reader left (`misical inspect STORE | head`): stop quietly, as CLI tools do on
        # SIGPIPE. Python then flushes stdout again at exit: point it at devnull first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (MisicalError, ValueError, *_PATH_ERRORS) as exc:
        print(f"misical: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("misical: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="misical",
        description="MiSiCAL: class-targeted active learning for segmentation as an RL benchmark.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(commands)
    return parser


# ---------------------------------------------------------------------------- prepare
def _add_prepare(commands: Any) -> None:
    prepare = commands.add_parser(
        "prepare",
        help="train the frozen segmenter and write a feature store",
        description="Train the segmenter once on the init split and write every patch's "
        "MC-dropout features and oracle counts to a memory-mapped store.",
    )
    from misical_gym.data.masks import IMAGE_SUFFIXES
    from misical_gym.prepare import CAMVID_DEFAULTS, PrepareConfig

    kinds = prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    def common(
        sub: argparse.ArgumentParser,
        default_name: str,
        init_fraction: float = 0.1,
        epochs: int = 20,
        train_crop: int | None = None,
        levels: int = PrepareConfig.levels,
        train_batch_size: int = PrepareConfig.train_batch_size,
    ) -> None:
        sub.add_argument(
            "--out",
            type=Path,
            help=f"store directory (default: $MISICAL_HOME/{default_name}, "
            f"else ~/.cache/misical/{default_name})",
        )
        sub.add_argument(
            "--init-fraction",
            type=float,
            default=init_fraction,
            help=f"init share ({init_fraction})",
        )
        sub.add_argument("--grid", default="4x4", help="patch grid ROWSxCOLS (4x4)")
        sub.add_argument("--mc-samples", type=int, default=20, help="MC-dropout samples T (20)")
        sub.add_argument(
            "--mc-stride", type=int, default=4, help="head resolution for MC statistics (1/4)"
        )
        sub.add_argument(
            "--uncertainty",
            default="bald,entropy",
            metavar="M1,M2",
            help="uncertainty metrics of the store's patch columns: bald,entropy (the default, "
            "always computed) plus any of margin, least_confidence, variation_ratio, prob_std, "
            "each pooled per patch as its mean and its most uncertain pixel, in the same "
            "MC-dropout pass",
        )
        sub.add_argument("--epochs", type=int, default=epochs, help=f"segmenter epochs ({epochs})")
        sub.add_argument(
            "--train-crop",
            type=int,
            metavar="PX",
            help="train the segmenter on a random PX x PX window of each image per epoch; "
            "PX = --image-size trains on whole images (default: "
            + (
                "whole images)"
                if train_crop is None
                else f"{train_crop} when --image-size is larger, else whole images)"
            ),
        )
        sub.add_argument(
            "--train-batch-size",
            type=int,
            default=train_batch_size,
            metavar="N",
            help=f"images (or windows) per segmenter training step ({train_batch_size})",
        )
        sub.add_argument(
            "--levels",
            type=int,
            default=levels,
            help=f"the segmenter's resolution levels; each more sees more context ({levels})",
        )
        sub.add_argument("--seed", type=int, default=0, help="split and training seed (0)")
        sub.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sub.add_argument("--threads", type=int, help="torch CPU threads (default: half the cores)")
        sub.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an existing store (only a store: any other folder or file is refused)",
        )
        sub.set_defaults(run=_run_prepare, default_name=default_name)

    synthetic = kinds.add_parser("synthetic", help="the offline synthetic world")
    synthetic.add_argument("--images", type=int, default=3000, help="images to generate (3000)")
    synthetic.add_argument("--image-size", type=int, default=64, help="image side in px (64)")
    common(synthetic, "synthetic")

    coco10k = kinds.add_parser("coco10k", help="COCO-Stuff 10k v1.1 (downloaded)")
    coco10k.add_argument("--root", type=Path, required=True, help="the dataset's root folder")
    coco10k.add_argument("--image-size", type=int, default=256, help="network input side (256)")
    _add_outside_root(coco10k, "image list entries")
    common(coco10k, "coco10k")

    coco164k = kinds.add_parser("coco164k", help="COCO-Stuff 164k (downloaded)")
    coco164k.add_argument("--root", type=Path, required=True, help="the dataset's root folder")
    coco164k.add_argument("--split", default="train2017", help="image split to mine (train2017)")
    coco164k.add_argument("--test-split", default="val2017", help="test split (val2017)")
    coco164k.add_argument("--image-size", type=int, default=256, help="network input side (256)")
    common(coco164k, "coco164k")

    coco_json = kinds.add_parser("coco-json", help="any COCO-format instances / stuff JSON")
    coco_json.add_argument("--images", type=Path, required=True, help="image folder")
    coco_json.add_argument(
        "--annotations", type=Path, nargs="+", required=True, help="annotation JSON files"
    )
    coco_json.add_argument("--image-size", type=int, default=256, help="network input side (256)")
    _add_outside_root(coco_json, "file_name values")
    _add_unlabelled(coco_json)
    common(coco_json, "coco-json")

    masks = kinds.add_parser(
        "masks", help="any folder of images and label masks (index, palette or RGB-coded)"
    )
    masks.add_argument("--images", type=Path, required=True, help="image folder")
    masks.add_argument(
        "--labels", type=Path, required=True, help="label folder (labels matched by file stem)"
    )
    masks.add_argument(
        "--classes",
        type=Path,
        required=True,
        help="classes file: one name a line, or YAML/JSON with names, values, colors, ignore",
    )
    masks.add_argument(
        "--root",
        type=Path,
        help="dataset root that list files resolve against (default: the common parent of "
        "--images and --labels)",
    )
    masks.add_argument(
        "--train-list", type=Path, help="list of 'image [label]' lines for init and pool"
    )
    test = masks.add_mutually_exclusive_group()
    test.add_argument("--test-list", type=Path, help="list of 'image [label]' lines for test")
    test.add_argument("--test-images", type=Path, help="test image folder (with --test-labels)")
    test.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="test share, without a test list or folder (0.1)",
    )
    masks.add_argument("--test-labels", type=Path, help="test label folder (with --test-images)")
    masks.add_argument(
        "--image-suffixes",
        default=",".join(IMAGE_SUFFIXES),
        help=f"image suffixes, comma-separated ({','.join(IMAGE_SUFFIXES)})",
    )
    masks.add_argument("--label-suffix", default=".png", help="label suffix (.png)")
    masks.add_argument(
        "--unknown-as-ignore",
        action="store_true",
        help="treat label values or colours the classes file does not name as ignore",
    )
    masks.add_argument("--image-size", type=int, default=256, help="network input side (256)")
    _add_unlabelled(masks)
    common(masks, "masks")

    camvid = kinds.add_parser(
        "camvid", help="CamVid, SegNet layout (train and val: init and pool; test: test)"
    )
    camvid.add_argument("--root", type=Path, required=True, help="the CamVid folder")
    camvid.add_argument(
        "--image-size",
        type=int,
        default=CAMVID_DEFAULTS["image_size"],
        help=f"network input side ({CAMVID_DEFAULTS['image_size']})",
    )
    _add_unlabelled(camvid)
    common(
        camvid,
        "camvid",
        init_fraction=CAMVID_DEFAULTS["init_fraction"],
        epochs=CAMVID_DEFAULTS["epochs"],
        train_crop=CAMVID_DEFAULTS["train_crop"],
        levels=CAMVID_DEFAULTS["levels"],
        train_batch_size=CAMVID_DEFAULTS["train_batch_size"],
    )


def _add_unlabelled(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unlabelled",
        type=Path,
        metavar="DIR",
        help="a folder of images without labels: they join the pool split with features and "
        "unknown counts (environments never draw them; rank and label them)",
    )


def _add_outside_root(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help=f"read {what} that point outside the dataset folder (refused by default)",
    )


def _run_prepare(args: argparse.Namespace) -> int:
    from misical_gym.data import PatchGrid
    from misical_gym.paths import default_store_path
    from misical_gym.prepare import (
        PrepareConfig,
        camvid_config,
        prepare,
        prepare_camvid,
        prepare_synthetic,
    )

    train_crop = args.train_crop
    if args.dataset == "camvid" and train_crop is None:
        train_crop = camvid_config(image_size=args.image_size).train_crop
    config = PrepareConfig(
        grid=PatchGrid.parse(args.grid),
        init_fraction=args.init_fraction,
        mc_samples=args.mc_samples,
        mc_stride=args.mc_stride,
        uncertainty=tuple(m.strip() for m in args.uncertainty.split(",") if m.strip()),
        epochs=args.epochs,
        train_crop=train_crop,
        train_batch_size=args.train_batch_size,
        levels=args.levels,
        image_size=None if args.dataset == "synthetic" else args.image_size,
        device=args.device,
        seed=args.seed,
        threads=args.threads,
        **({"test_fraction": args.test_fraction} if args.dataset == "masks" else {}),
    )
    out = args.out or default_store_path(args.default_name)
    if args.dataset == "synthetic":
        store = prepare_synthetic(
            out,
            images=args.images,
            seed=args.seed,
            image_size=args.image_size,
            config=config,
            overwrite=args.overwrite,
        )
    elif args.dataset == "camvid":
        store = prepare_camvid(
            args.root, out, config=config, unlabelled=args.unlabelled, overwrite=args.overwrite
        )
    else:
        from misical_gym.data import CocoJson, CocoStuff10k, CocoStuff164k, SegmentationDataset

        datasets: list[SegmentationDataset]
        if args.dataset == "masks":
            datasets = _mask_datasets(args)
        elif args.dataset == "coco10k":
            outside = args.allow_outside_root
            datasets = [
                CocoStuff10k(args.root, split, allow_outside_root=outside)
                for split in ("train", "test")
            ]
        elif args.dataset == "coco164k":
            datasets = [
                CocoStuff164k(args.root, args.split),
                CocoStuff164k(args.root, args.test_split),
            ]
        else:
            datasets = [
                CocoJson(args.images, args.annotations, allow_outside_root=args.allow_outside_root)
            ]
        unlabelled = getattr(args, "unlabelled", None)  # masks and coco-json take it
        store = prepare(datasets, out, config, unlabelled=unlabelled, overwrite=args.overwrite)
    print(json.dumps(describe_store(store), indent=1))
    print(f"store written to {store.path}", file=sys.stderr)
    return 0


def _mask_datasets(args: argparse.Namespace) -> list[Any]:
    """The train (and, when given, test) :class:`MaskFolder` of ``misical prepare masks``."""
    from misical_gym.data import MaskFolder, read_mask_classes

    if (args.test_images is None) != (args.test_labels is None):
        raise ValueError("--test-images and --test-labels go together")
    shared = {
        "classes": read_mask_classes(args.classes),
        "image_suffixes": [s.strip() for s in args.image_suffixes.split(",") if s.strip()],
        "label_suffix": args.label_suffix,
        "unknown_as_ignore": args.unknown_as_ignore,
    }
    lists = None if args.train_list is None else [args.train_list]
    train = MaskFolder(
        images=args.images, labels=args.labels, root=args.root, lists=lists, **shared
    )
    if args.test_list is not None:
        return [
            train,
            MaskFolder(root=train.root, lists=[args.test_list], labels=args.labels, **shared),
        ]
    if args.test_images is not None:
        return [train, MaskFolder(images=args.test_images, labels=args.test_labels, **shared)]
    return [train]


# ---------------------------------------------------------------------------- inspect
def _add_inspect(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="print a JSON summary of a feature store, or where a default store is",
        description="Summarise a store; --path NAME prints the directory of the default store "
        "NAME ($MISICAL_HOME/NAME, else ~/.cache/misical/NAME), e.g. for --store.",
    )
    which = inspect.add_mutually_exclusive_group(required=True)
    which.add_argument("store", type=Path, nargs="?", help="store directory")
    which.add_argument(
        "--path", metavar="NAME", help="print the default store NAME's path (e.g. synthetic)"
    )
    inspect.set_defaults(run=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from misical_gym.paths import default_store_path
    from misical_gym.store import MANIFEST, FeatureStore

    if args.path is None:
        print(json.dumps(describe_store(FeatureStore.open(args.store)), indent=1))
        return 0
    if Path(args.path).name != args.path or args.path in ("", ".", ".."):
        raise ValueError(f"--path takes a store name such as synthetic, got {args.path!r}")
    path = default_store_path(args.path)
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(
            f"no prepared store called {args.path!r} at {path}: prepare it with "
            "`misical prepare` (`misical prepare synthetic` for the synthetic world)"
        )
    print(path)
    return 0


def describe_store(store: Any) -> dict[str, Any]:
    """The JSON summary ``misical inspect`` prints."""
    from misical_gym.store import SPLITS

    segmenter = store.manifest.get("segmenter") or {}
    test_iou = segmenter.get("test_iou")
    return {
        "path": str(store.path),
        "dataset": store.dataset.get("kind"),
        "patches": store.num_patches,
        "images": len(store.image_ids),
        "grid": f"{store.grid.rows}x{store.grid.cols}",
        "classes": store.num_classes,
        "rare_classes": [store.class_names[c] for c in store.rare_classes],
        "patches_per_split": {s: int(store.split_ids(s).size) for s in SPLITS},
        "labelled_patches_per_split": {
            s: int(store.split_ids(s, labelled=True).size) for s in SPLITS
        },
        "unlabelled_patches_per_split": {
            s: int(store.split_ids(s, labelled=False).size) for s in SPLITS
        },
        # Over the labelled patches: an unlabelled patch's counts are unknown, not absent.
        "class_patch_frequency": {
            split: {
                name: round(int(n) / max(int(store.split_ids(split, labelled=True).size), 1), 5)
                for name, n in zip(store.class_names, store.class_patches(split), strict=True)
            }
            for split in SPLITS
        },
        "segmenter_test_iou": None
        if test_iou is None
        else dict(zip(store.class_names, test_iou, strict=True)),
    }


# ---------------------------------------------------------------------------- add-images
def _add_add_images(commands: Any) -> None:
    add = commands.add_parser(
        "add-images",
        help="add a folder of unlabelled images to a store's pool (the segmenter stays frozen)",
        description="Compute the features of new, unlabelled images with the store's own "
        "segmenter checkpoint and settings and add them to its pool split with unknown counts. "
        "The store is rewritten atomically: a killed run leaves it as it was.",
    )
    add.add_argument("store", type=Path, help="store directory")
    add.add_argument("images", type=Path, help="folder of new images (no labels)")
    add.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add.add_argument("--threads", type=int, help="torch CPU threads (default: half the cores)")
    add.set_defaults(run=_run_add_images)


def _run_add_images(args: argparse.Namespace) -> int:
    from misical_gym.prepare import add_images

    store = add_images(args.store, args.images, device=args.device, threads=args.threads)
    print(json.dumps(describe_store(store), indent=1))
    return 0


# ---------------------------------------------------------------------------- label
def _add_label(commands: Any) -> None:
    from misical_gym.annotations import FORMATS

    label = commands.add_parser(
        "label",
        help="take returned annotations in: their patches' oracle counts, marked labelled",
        description="Read annotations of a store's images and turn them into the oracle "
        "counts of the patches they cover. A patch becomes labelled only when the annotation "
        "covers every pixel of it (with a class, or the dataset's ignore class); a patch with any "
        "unannotated pixel keeps unknown counts. Images are matched by the dataset's file "
        "names. masks: a folder of label PNGs named as the images, in the dataset's encoding "
        "(value 255 = not annotated); masks carry no store id and are matched by file name "
        "only, unless --picks names the selection they answer. coco: COCO JSON (polygons or "
        "RLE), categories matched by class name, pixels no annotation covers not annotated; its"
        " info's store_id and store_fingerprint, when present, must name this store. "
        "labelstudio: a Label Studio JSON export of the tasks misical select --format "
        "labelstudio wrote (polygons or brush masks; their store id and fingerprint must match). "
        "Nothing changes when anything is refused (an image the store does not know, a size "
        "mismatch, another store's fingerprint); labelling again is idempotent, and the store "
        "is rewritten atomically.",
    )
    label.add_argument("store", type=Path, help="store directory")
    label.add_argument("--annotations", type=Path, required=True, help="annotation file or folder")
    label.add_argument("--format", default="masks", choices=FORMATS, help="(masks)")
    label.add_argument(
        "--picks",
        type=Path,
        help="the misical select JSON the annotations answer: only its patches are labelled "
        "(each checked against the store: its image and box)",
    )
    label.set_defaults(run=_run_label)


def _run_label(args: argparse.Namespace) -> int:
    from misical_gym.annotations import read_annotations
    from misical_gym.annotations.apply import label_patches, read_picks
    from misical_gym.store import FeatureStore

    store = FeatureStore.open(args.store)
    only = None if args.picks is None else read_picks(args.picks, store)
    summary = label_patches(store, read_annotations(args.annotations, args.format, store), only)
    print(json.dumps(summary, indent=1))
    return 0


# ---------------------------------------------------------------------------- train
def _add_train(commands: Any) -> None:
    from misical_gym.train.run import add_train_arguments

    train = commands.add_parser(
        "train",
        help="train an agent (DDQN, SB3, heuristic, supervised) and log to TensorBoard",
        description="Train one agent on one env and target; pretrain on init, then deploy on "
        "pool. Writes <logdir>/<env>/<target>/<agent>_<seed>/.",
    )
    add_train_arguments(train)
    train.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from misical_gym.atomic import check_writable_dir
    from misical_gym.train.run import main as train_main

    check_writable_dir(args.logdir)
    return train_main(args)


# ---------------------------------------------------------------------------- select
def _add_select(commands: Any) -> None:
    from misical_gym.train.select import add_select_arguments

    select = commands.add_parser(
        "select",
        help="pick the next patches to annotate for one class (no retraining)",
        description="Run a policy over the pool split and write the picked patches.",
    )
    add_select_arguments(select)
    select.set_defaults(run=_run_select)


def _run_select(args: argparse.Namespace) -> int:
    from misical_gym.atomic import check_writable_dir
    from misical_gym.train.select import main as select_main

    if args.out.is_dir():
        raise IsADirectoryError(f"--out {args.out} is a directory; name the output file")
    check_writable_dir(args.out.parent)  # before the selection, not after it
    if args.preview is not None:
        from misical_gym.store import FeatureStore
        from misical_gym.train.preview import check_preview

        check_writable_dir(args.preview.parent)
        check_preview(FeatureStore.open(args.store))
    return select_main(args)


# ---------------------------------------------------------------------------- evaluate
def _add_evaluate(commands: Any) -> None:
    from misical_gym.train.evaluate import add_evaluate_arguments

    evaluate = commands.add_parser(
        "evaluate",
        help="per-class comparison of policies with random (the paper's table)",
        description="For every target, policy and seed: select from the pool without "
        "retraining, then count the target pixels acquired; with --retrain, also fine-tune the "
        "segmenter on init plus the picks and measure the target's test IoU. Resumes in the "
        "same --out.",
    )
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from misical_gym.atomic import check_writable_dir
    from misical_gym.train.evaluate import main as evaluate_main

    check_writable_dir(args.out)
    return evaluate_main(args)


# ---------------------------------------------------------------------------- sweep
def _add_sweep(commands: Any) -> None:
    from misical_gym.train.sweep import add_sweep_arguments

    sweep = commands.add_parser(
        "sweep",
        help="train and evaluate a grid of hyperparameters and env arguments against random",
        description="For every point of --grid x --env-grid, target and seed: train the agent "
        "as misical evaluate does, select from the pool, and count the target pixels acquired "
        "(and the greedy reward) against random's. Writes points.csv/json, heatmaps per target "
        "and pair of axes, and summary.md. Resumes in the same --out.",
    )
    add_sweep_arguments(sweep)
    sweep.set_defaults(run=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from misical_gym.atomic import check_writable_dir
    from misical_gym.train.sweep import main as sweep_main

    check_writable_dir(args.out)
    return sweep_main(args)


# ---------------------------------------------------------------------------- rounds
def _add_rounds(commands: Any) -> None:
    from misical_gym.train.rounds import add_rounds_arguments

    rounds = commands.add_parser(
        "rounds",
        help="R rounds of select, label and update, held-back labels as the annotator, "
        "against random",
        description="Simulate the annotation loop on a prepared store whose pool is unlabelled "
        "(or --hide-pool-labels): each round ranks the pool with the policy (select --mode "
        "rank), labels the picks from the held-back annotations (label --picks), and updates "
        "the policy on the pool labelled so far (train --resume --online-steps); random runs the "
        "same rounds in its own copy of the store. Reports the target pixels per round. The "
        "store is copied into --out and never changed; run again to resume.",
    )
    add_rounds_arguments(rounds)
    rounds.set_defaults(run=_run_rounds)


def _run_rounds(args: argparse.Namespace) -> int:
    from misical_gym.atomic import check_writable_dir
    from misical_gym.train.rounds import main as rounds_main

    check_writable_dir(args.out)
    return rounds_main(args)


# ---------------------------------------------------------------------------- demo
def _add_demo(commands: Any) -> None:
    from misical_gym.train.demo import add_demo_arguments

    demo = commands.add_parser(
        "demo",
        help="the whole story on the synthetic world: prepare, train, compare, retrain, report",
        description="Prepare the synthetic world, train a DDQN per rare class and a "
        "goal-conditioned one, compare them with SB3's DQN, the supervised ablation and the "
        "heuristics, retrain the segmenter on the DDQN's and random's picks (--quick: on every "
        "policy's), and write the report. "
        "Offline; resumes when run again.",
    )
    add_demo_arguments(demo)
    demo.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from misical_gym.train.demo import main as demo_main

    return demo_main(args)


_SUBCOMMANDS: list[Callable[[Any], None]] = [
    _add_demo,
    _add_prepare,
    _add_inspect,
    _add_add_images,
    _add_label,
    _add_train,
    _add_select,
    _add_evaluate,
    _add_sweep,
    _add_rounds,
]


if __name__ == "__main__":
    raise SystemExit(main())
