"""The benchmark scripts run and report what they measured (tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_bench_env_reports_the_given_stores_patches(tiny_store) -> None:
    argv = ["--store", str(tiny_store.path), "--steps", "300", "--vector-envs", "4"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_env.py"), *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["store"]["patches"] == tiny_store.num_patches
    assert report["env_path_imported_torch"] is False
