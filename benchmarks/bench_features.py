"""MC-dropout feature cost: head-only sampling against one deterministic pass and full-model MC.

Prints one JSON object. Full-model MC runs the whole network T times with dropout on, which is
what a generic MC-dropout wrapper does (baal's, by default); head-only MC runs the encoder once
and samples only the 1x1 head, accumulating the same per-patch statistics.

Head-only MC runs at ``prepare``'s default stride (the head on encoder features pooled 4x4).
It is also timed with each extra uncertainty metric of ``misical prepare --uncertainty`` and
with all four, in the same streaming pass; their extra cost should stay within 1.3x.

Usage: ``python benchmarks/bench_features.py [--images 64] [--samples 20] [--threads N]``
(default threads: as ``prepare``, half the cores).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch

from misical_gym.data import PatchGrid
from misical_gym.data.synthetic import CLASS_NAMES, SyntheticScenes
from misical_gym.features import EXTRA_METRICS, mc_patch_features
from misical_gym.prepare import SYNTHETIC_DEFAULTS, PrepareConfig
from misical_gym.runtime import default_threads
from misical_gym.segmenter import SmallUNet


class FullModelMC(torch.nn.Module):
    """The whole network as the "head": every MC sample reruns the encoder as well.

    Same statistics at the same resolution as head-only MC, so only the sampling differs.
    """

    def __init__(self, model: SmallUNet, stride: int) -> None:
        super().__init__()
        self.model, self.stride = model, stride

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model.encode(x)
        h, w = z.shape[-2:]
        z = torch.nn.functional.adaptive_avg_pool2d(z, (h // self.stride, w // self.stride))
        return self.model.head(z)


def seconds_per_image(
    run: Callable[[torch.Tensor], object], x: torch.Tensor, repeats: int
) -> float:
    run(x[:2])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / len(x)


def interleaved(
    runs: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Median seconds per image of each run, timed in turn within every round, so that a
    change of the machine's load between rounds falls on all of them alike."""
    for run in runs.values():
        run(x[:2])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) / len(x) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images per timed batch")
    parser.add_argument("--samples", type=int, default=20, help="MC samples T")
    parser.add_argument("--threads", type=int, default=default_threads(), help="CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stride", type=int, default=PrepareConfig().mc_stride, help="MC stride")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = SYNTHETIC_DEFAULTS["image_size"]
    world = SyntheticScenes(args.images, seed=0, image_size=size)
    x = torch.from_numpy(np.stack([world[i][0] for i in range(args.images)])).permute(0, 3, 1, 2)
    x = x / 255.0
    model = SmallUNet(len(CLASS_NAMES)).eval()
    grid = PatchGrid(4, 4)
    with torch.no_grad():
        deterministic = seconds_per_image(lambda b: model.eval()(b), x, args.repeats)
        head_only = seconds_per_image(
            lambda b: mc_patch_features(model, b, grid, args.samples, args.stride), x, args.repeats
        )
        extra = interleaved(
            {
                name: lambda b, metrics=metrics: mc_patch_features(
                    model, b, grid, args.samples, args.stride, ("bald", "entropy", *metrics)
                )
                for name, metrics in [
                    ("none", ()),
                    *((m, (m,)) for m in EXTRA_METRICS),
                    ("all", EXTRA_METRICS),
                ]
            },
            x,
            args.repeats,
        )
        baseline = extra.pop("none")
        full_model = FullModelMC(model, args.stride)
        full = seconds_per_image(
            lambda b: mc_patch_features(full_model, b, grid, args.samples), x, args.repeats
        )
    report = {
        "segmenter": "SmallUNet (default)",
        "image_size": size,
        "classes": len(CLASS_NAMES),
        "samples": args.samples,
        "mc_stride": args.stride,
        "threads": args.threads,
        "seconds_per_image": {
            "deterministic_pass": round(deterministic, 6),
            "head_only_mc": round(head_only, 6),
            "full_model_mc": round(full, 6),
        },
        "head_only_with_extra_uncertainty": {k: round(v, 6) for k, v in extra.items()},
        # Against head-only MC timed in the same rounds: a loaded machine slows them alike.
        "extra_uncertainty_over_head_only": {k: round(v / baseline, 2) for k, v in extra.items()},
        "head_only_over_deterministic": round(head_only / deterministic, 2),
        "full_model_over_head_only": round(full / head_only, 2),
        "required": {
            "head_only_mc <= 3x deterministic": head_only <= 3 * deterministic,
            "head_only_mc >= 5x faster than full_model_mc": full >= 5 * head_only,
            "all extra uncertainty metrics <= 1.3x head_only_mc": extra["all"] <= 1.3 * baseline,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
