"""The goal-conditioned policy of ``misical evaluate`` and ``misical demo`` end to end."""

from __future__ import annotations

import json

import pytest

from misical_gym.train.evaluate import evaluate, policy_agent
from misical_gym.train.select import select_patches


def test_policy_names() -> None:
    assert policy_agent("ddqn") == ("ddqn", False)
    assert policy_agent("ddqn-goal") == ("ddqn", True)
    assert policy_agent("dqn-goal") == ("dqn", True)
    with pytest.raises(ValueError, match="ddqn-goal|goal-conditioned"):
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
