"""The goal-conditioned policy of ``misical evaluate`` and ``misical demo`` end to end."""

from __future__ import annotations

import json

import pytest

from misical_gym.train.evaluate import evaluate
from misical_gym.train.jobs import policy_agent
from misical_gym.train.select import select_patches


def test_policy_names() -> None:
    assert policy_agent("ddqn") == ("ddqn", False)
    assert policy_agent("ddqn-goal") == ("ddqn", True)
    assert policy_agent("dqn-goal") == ("dqn", True)
    with pytest.raises(ValueError, match="unknown policy 'random-goal'"):
        policy_agent("random-goal")  # a heuristic has nothing to condition
    with pytest.raises(ValueError, match="unknown policy 'dqnn'"):
        policy_agent("dqnn")


def test_goal_conditioned_policy_is_trained_once_for_every_target(tiny_store, tmp_path) -> None:
    targets = [tiny_store.class_names[c] for c in (1, 2)]
    out = tmp_path / "goal"
    summary = evaluate(
        tiny_store.path,
        out,
        targets=targets,
        policies=("ddqn-goal", "random"),
        budget=6,
        seeds=1,
        pretrain_steps=60,
        online_steps=20,
    )
    runs = sorted((out / "training").glob("*/*/*/ddqn_0/config.yaml"))
    assert len(runs) == 1, runs  # one policy serves both targets
    assert runs[0].parent.parent.name == "random"
    rows = json.loads((out / "results.json").read_text())
    assert sorted(r["target"] for r in rows if r["policy"] == "ddqn-goal") == sorted(targets)
    assert summary["policies"]["ddqn-goal"]["classes"] == 2
    # Selection gives a goal-conditioned model the target's one-hot it was trained with.
    selection = select_patches(tiny_store.path, str(runs[0].parent), targets[0], 6)
    assert selection["target"] == targets[0] and len(selection["picks"]) == 6


def test_demo_runs_the_whole_story(misical_home, tmp_path, monkeypatch) -> None:
    import dataclasses

    import misical_gym.train.evaluate as evaluate_module
    from misical_gym.train import demo

    tiny = dataclasses.replace(
        demo.FULL,
        store_name="synthetic-tiny",
        images=160,
        epochs=1,
        mc_samples=2,
        pretrain_steps=40,
        online_steps=10,
        budget=4,
        retrain_epochs=1,
    )
    out = tmp_path / "demo"
    summary = demo.run_demo(out, tiny, workers=1, progress=False)
    assert (misical_home / "synthetic-tiny" / "manifest.json").is_file()
    assert set(summary["policies"]) == set(demo.DEMO_POLICIES)
    assert summary["targets"] == ["skis", "fork", "surfboard"]
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 3 * len(demo.DEMO_POLICIES)
    assert all(r["iou"] is None or 0.0 <= r["iou"] <= 1.0 for r in rows)
    assert summary["retrain_epochs"] == 1  # retrained (the tiny test split may lack the class)
    retrained = [policy for policy, row in summary["policies"].items() if "iou" in row]
    assert retrained == ["ddqn", "random"]  # the full demo retrains on those picks only
    report = (out / "report.md").read_text()
    assert "## IoU after retraining" in report and "**skis**" in report
    assert (out / "gain_over_random.png").is_file() and (out / "acquisition.png").is_file()
    assert list((out / "training").glob("*/*/random/ddqn_0/summary.json"))  # goal-conditioned

    # Run again, it resumes: every job is found done and nothing is trained or selected again.
    def run_job_again(job):
        raise AssertionError(f"job {job.target}/{job.policy} was run again")

    monkeypatch.setattr(evaluate_module, "run_job", run_job_again)
    assert demo.run_demo(out, tiny, workers=1, progress=False) == summary


def test_demo_cli_rejects_bad_arguments(misical_home, tmp_path, capsys) -> None:
    from misical_gym.cli import main

    assert main(["demo", "--workers", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert main(["demo", "--seeds", "0", "--out", str(tmp_path / "d")]) == 2
    assert not (misical_home / "synthetic").exists()  # rejected before any work


def test_jobs_that_train_run_first() -> None:
    from misical_gym.train.jobs import Job, longest_first

    def job(target: str, policy: str) -> Job:
        return Job("s", "f", target, 0, policy, 0, 1, 1, 1, 1, False, None, "c")

    jobs = [job(t, p) for t in ("a", "b") for p in ("random", "ddqn-goal")] + [job("a", "ddqn")]
    order = [(j.target, j.policy) for j in longest_first(jobs)]
    assert order == [
        ("a", "ddqn-goal"),  # trains the goal-conditioned policy ...
        ("a", "ddqn"),
        ("b", "ddqn-goal"),  # ... which this job then reuses
        ("a", "random"),
        ("b", "random"),
    ]
