"""Evaluation outputs: names from data stay inside --out, and resumed rows are never stale."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from misical_gym.cli import main
from misical_gym.testing import write_random_store
from misical_gym.train.evaluate import evaluate

FAST = {"budget": 4, "pool_size": 8, "seeds": 1, "policies": ("random", "presence")}


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    """Class names that are paths, and two that sanitise to the same text."""
    names = ["../../../../escape", "/abs/path", "a b", "a_b", "plain", "c5", "c6", "c7"]
    path = tmp_path_factory.mktemp("hostile") / "store"
    return write_random_store(path, num_images=40, class_names=names, seed=0)


def test_class_names_never_leave_out_and_never_collide(hostile_store, tmp_path) -> None:
    out = tmp_path / "sandbox" / "out"
    targets = ["../../../../escape", "/abs/path", "a b", "a_b"]
    evaluate(hostile_store.path, out, targets=targets, **FAST)
    inside = {p.resolve() for p in out.rglob("*")}
    written = {p.resolve() for p in (tmp_path / "sandbox").rglob("*")}
    assert written - inside == {out.resolve()}  # nothing beside or above --out
    assert not Path("/abs/path").exists()
    rows = json.loads((out / "results.json").read_text())
    assert sorted({r["target"] for r in rows}) == sorted(targets)  # a b and a_b both kept
    assert len(list((out / "jobs").glob("*.json"))) == len(targets) * 2


def test_train_run_directories_stay_inside_logdir(hostile_store, tmp_path) -> None:
    logdir = tmp_path / "runs"
    argv = ["train", "--agent", "random", "--env", "MiSiCAL-Store"]
    argv += ["--env-kwargs", f"root={hostile_store.path}", "budget=4"]
    argv += ["--target", "0", "--steps", "8", "--logdir", str(logdir), "--eval-episodes", "1"]
    assert main(argv) == 0
    (summary,) = logdir.rglob("summary.json")  # the old code wrote it four levels up
    assert logdir.resolve() in summary.resolve().parents


def test_another_budget_or_store_on_the_same_out_runs_again(tiny_store, tmp_path) -> None:
    kwargs = {**FAST, "targets": ["class3"]}
    reused = tmp_path / "reused"
    evaluate(tiny_store.path, reused, **kwargs)
    other = write_random_store(tmp_path / "other", num_images=40, seed=5)
    for store, budget in ((tiny_store, 12), (other, 4)):
        evaluate(store.path, reused, **{**kwargs, "budget": budget})
        fresh = tmp_path / f"fresh-{store.path.name}-{budget}"
        evaluate(store.path, fresh, **{**kwargs, "budget": budget})
        assert (reused / "results.json").read_text() == (fresh / "results.json").read_text()


def test_fewer_seeds_write_exactly_the_requested_rows(tiny_store, tmp_path) -> None:
    kwargs = {**FAST, "targets": ["class3"]}
    evaluate(tiny_store.path, tmp_path, **{**kwargs, "seeds": 2})
    evaluate(tiny_store.path, tmp_path, **kwargs)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert sorted((r["policy"], r["seed"]) for r in rows) == [("presence", 0), ("random", 0)]


@pytest.mark.parametrize("damage", ["", "{not json", "[]", '{"digest": 3}', '{"row": {}}'])
def test_damaged_job_files_are_run_again(tiny_store, tmp_path, damage, capsys) -> None:
    kwargs = {**FAST, "targets": ["class3"]}
    evaluate(tiny_store.path, tmp_path, **kwargs)
    expected = (tmp_path / "results.json").read_text()
    (job_file,) = (tmp_path / "jobs").glob("*__presence__0.json")
    job_file.write_text(damage)
    evaluate(tiny_store.path, tmp_path, **kwargs)
    assert (tmp_path / "results.json").read_text() == expected
    assert json.loads(job_file.read_text())["row"]["policy"] == "presence"
    if damage in ("", "{not json"):
        assert str(job_file) in capsys.readouterr().err


def test_select_takes_a_heuristic_run_directory(tiny_store, tmp_path, capsys) -> None:
    argv = ["train", "--agent", "presence", "--env", "MiSiCAL-Store"]
    argv += ["--env-kwargs", f"root={tiny_store.path}", "--target", "class3", "--steps", "8"]
    argv += ["--logdir", str(tmp_path / "runs"), "--eval-episodes", "1"]
    assert main(argv) == 0
    (run_dir,) = {p.parent for p in (tmp_path / "runs").rglob("summary.json")}
    out = tmp_path / "picks.json"
    argv = ["select", "--store", str(tiny_store.path), "--policy", str(run_dir)]
    assert main([*argv, "--target", "class3", "--budget", "3", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["picks"]) == 3
    (run_dir / "summary.json").write_text("{}")
    assert main([*argv, "--target", "class3", "--budget", "3", "--out", str(out)]) == 2
    assert "not a complete run" in capsys.readouterr().err


def test_workers_exit_when_the_evaluating_parent_is_killed(tiny_store, tmp_path) -> None:
    script = textwrap.dedent(
        f"""
        import time
        import misical_gym.train.jobs as jobs
        import misical_gym.train.evaluate as evaluate_module

        def slow(job):
            time.sleep(600)

        evaluate_module.run_job = slow
        evaluate_module.evaluate({str(tiny_store.path)!r}, {str(tmp_path / "out")!r},
            targets=["class3"], policies=("random", "presence"), seeds=2, workers=2)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = [p for p in psutil.Process(parent.pid).children() if "python" in p.name()]
        assert len(workers) >= 2, "the workers did not start"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"orphaned workers still run: {[p.pid for p in alive]}"
    finally:
        os.killpg(parent.pid, signal.SIGKILL) if parent.poll() is None else None
