"""Time ``misical prepare camvid`` with its defaults and report the segmenter's per-class test IoU.

Runs the preset (``misical_gym.prepare.prepare_camvid``) into a fresh store, and prints one JSON
object: wall seconds; how loaded the machine was (it may be shared): the CPU count, the 1-minute
load average sampled every 10 s during the run, and the CPU seconds this process got per wall
second; one training step of a fixed probe network (to compare machines) and of the preset's,
and what a training window costs in the preset against the probe; and the frozen segmenter's
test IoU for every class, as the store's manifest records it. ``--steps-only`` times the steps
alone.
``--out`` keeps the store (default: a temporary folder, removed afterwards); ``--json FILE`` also
writes the report there; ``--epochs``, ``--train-crop``, ``--train-batch-size``, ``--levels``,
``--image-size`` and ``--init-fraction`` time a variant of the preset.

Usage: ``python benchmarks/prepare_camvid.py --root DIR [--out DIR] [--json FILE] [--threads N]
[--epochs N] [--train-crop PX] [--train-batch-size N] [--levels N] [--image-size PX]
[--init-fraction X] [--steps-only]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

from misical_gym.atomic import atomic_write_text


def time_training_step(
    threads: int | None, steps: int = 5, *, levels: int | None = None, batch: int | None = None
) -> float:
    """Seconds per training step of the segmenter on a batch of random 128-px windows.

    Without ``levels`` and ``batch`` this is a fixed probe, to compare machines across reports:
    :class:`SmallUNet` at its own default levels and :class:`TrainConfig`'s batch size (16
    windows), the preset's network before it moved to four levels and batches of 8. The window,
    learning rate and 12 classes are the preset's.
    """
    import torch

    from misical_gym.prepare import CAMVID_DEFAULTS
    from misical_gym.runtime import cpu_threads
    from misical_gym.segmenter import SmallUNet, TrainConfig

    config, window, classes = TrainConfig(), CAMVID_DEFAULTS["train_crop"], 12
    batch = batch or config.batch_size
    torch.manual_seed(0)
    model = SmallUNet(classes) if levels is None else SmallUNet(classes, levels=levels)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    images = torch.randn(batch, 3, window, window)
    labels = torch.randint(0, classes, (batch, window, window))
    with cpu_threads(threads):
        for step in range(steps + 1):
            if step == 1:  # the first step allocates; time the rest
                start = time.perf_counter()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    return (time.perf_counter() - start) / steps


def step_report(threads: int | None, levels: int, batch: int, steps: int = 5) -> dict[str, float]:
    """The probe's step, the preset's step, and what a window costs in the preset against it."""
    from misical_gym.segmenter import TrainConfig

    probe = time_training_step(threads, steps)
    preset = time_training_step(threads, steps, levels=levels, batch=batch)
    return {
        "training_step_seconds": round(probe, 3),
        "preset_training_step_seconds": round(preset, 3),
        "preset_window_cost_vs_probe": round(
            (preset / batch) / (probe / TrainConfig().batch_size), 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the CamVid folder")
    parser.add_argument("--out", type=Path, help="store directory to keep (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: half the cores)")
    parser.add_argument("--epochs", type=int, help="segmenter epochs (default: the preset's)")
    parser.add_argument("--train-crop", type=int, help="training window (default: the preset's)")
    parser.add_argument(
        "--train-batch-size", type=int, help="segmenter training batch (default: the preset's)"
    )
    parser.add_argument("--levels", type=int, help="segmenter levels (default: the preset's)")
    parser.add_argument("--image-size", type=int, help="network input side (default: the preset's)")
    parser.add_argument("--init-fraction", type=float, help="init share (default: the preset's)")
    parser.add_argument(
        "--steps-only",
        action="store_true",
        help="time the training steps only (the probe's and the preset's), without preparing",
    )
    args = parser.parse_args()

    from misical_gym.prepare import CAMVID_DEFAULTS, prepare_camvid

    samples: list[float] = []
    done = threading.Event()

    def sample_load() -> None:
        while True:
            samples.append(os.getloadavg()[0])
            if done.wait(10.0):
                return

    steps = step_report(
        args.threads,
        args.levels or CAMVID_DEFAULTS["levels"],
        args.train_batch_size or CAMVID_DEFAULTS["train_batch_size"],
    )
    if args.steps_only:
        print(json.dumps(steps, indent=1))
        return
    sampler = threading.Thread(target=sample_load, daemon=True)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "camvid"
        sampler.start()
        start = time.perf_counter()
        try:
            variant = {
                key: value
                for key, value in {
                    "epochs": args.epochs,
                    "train_crop": args.train_crop,
                    "train_batch_size": args.train_batch_size,
                    "levels": args.levels,
                    "image_size": args.image_size,
                    "init_fraction": args.init_fraction,
                }.items()
                if value is not None
            }
            store = prepare_camvid(
                args.root, out, overwrite=args.out is not None, threads=args.threads, **variant
            )
        finally:
            seconds = time.perf_counter() - start
            done.set()
            sampler.join()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        segmenter = store.manifest["segmenter"]
        report = {
            "command": " ".join(
                ["misical prepare camvid --root DIR"]
                + [f"--{key.replace('_', '-')} {value}" for key, value in variant.items()]
            ),
            "settings": {**CAMVID_DEFAULTS, **variant},
            "seconds": round(seconds, 1),
            "cpus": os.cpu_count(),
            "threads": store.manifest["config"]["prepare"]["threads"],
            "load_average_1min": {
                "mean": round(sum(samples) / len(samples), 2),
                "max": round(max(samples), 2),
            },
            "cpu_seconds_per_wall_second": round((usage.ru_utime + usage.ru_stime) / seconds, 2),
            **steps,
            "test_iou": {
                name: None if iou is None else round(iou, 3)
                for name, iou in zip(store.class_names, segmenter["test_iou"], strict=True)
            },
            "final_train_loss": round(segmenter["history"][-1]["loss"], 4),
        }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        atomic_write_text(args.json, text + "\n")


if __name__ == "__main__":
    main()
