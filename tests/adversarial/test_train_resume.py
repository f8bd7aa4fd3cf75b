"""``misical train`` resumes a killed run to the result of a run that was never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from misical_gym.agents.ddqn import DDQN
from misical_gym.cli import main


def _argv(
    store, logdir: Path, hyperparams: Path | None, agent: str = "ddqn", episodes: int = 2
) -> list[str]:
    argv = [
        "train", "--agent", agent, "--env", "MiSiCAL-Store",
        "--env-kwargs", f"root={store.path}", "budget=8", "pool_size=8",
        "--target", "class3", "--pretrain-steps", "900", "--online-steps", "900",
        "--seed", "0", "--device", "cpu", "--eval-episodes", str(episodes), "--threads", "1",
        "--logdir", str(logdir),
    ]  # fmt: skip
    if agent == "ddqn":
        argv += ["--checkpoint-every", "120"]
    return argv if hyperparams is None else [*argv, "--hyperparams", str(hyperparams)]


def _curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    (events,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
        if not tag.startswith("time/")
    }


@pytest.fixture()
def hyperparams(tmp_path) -> Path:
    path = tmp_path / "hp.yml"
    fast = {"learning_starts": 50, "batch_size": 16, "buffer_size": 4000, "train_freq": 2}
    path.write_text(yaml.safe_dump({"default": fast}))
    return path


def test_a_killed_ddqn_run_resumes_to_the_uninterrupted_result(
    tiny_store, tmp_path, hyperparams
) -> None:
    assert main(_argv(tiny_store, tmp_path / "whole", hyperparams)) == 0
    killed = tmp_path / "killed"
    run_dir = killed / "MiSiCAL-Store" / "class3" / "ddqn_0"
    command = [sys.executable, "-m", "misical_gym", *_argv(tiny_store, killed, hyperparams)]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.zip").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # past the checkpoint, so the killed run has logged points to drop
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "summary.json").exists(), "the run ended before it could be killed"
    assert 0 < DDQN.checkpoint_timesteps(run_dir / "checkpoint.zip") < 1800

    assert main(_argv(tiny_store, killed, hyperparams)) == 0  # the same command resumes
    whole = tmp_path / "whole" / "MiSiCAL-Store" / "class3" / "ddqn_0"
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole, run_dir)]
    for summary in summaries:
        summary.pop("seconds")
    assert summaries[0] == summaries[1]
    models = [DDQN.load(d / "model.zip") for d in (whole, run_dir)]
    for a, b in zip(
        models[0].q_net.state_dict().values(), models[1].q_net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    curves = _curves(run_dir)
    assert curves == _curves(whole)  # no point twice, none missing
    assert all(len({s for s, _ in c}) == len(c) for c in curves.values())


def test_finished_or_changed_runs_are_not_replaced_without_overwrite(
    tiny_store, tmp_path, capsys
) -> None:
    argv = _argv(tiny_store, tmp_path, None, agent="presence")
    assert main(argv) == 0
    assert main(argv) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    run_dir = tmp_path / "MiSiCAL-Store" / "class3" / "presence_0"
    (run_dir / "summary.json").unlink()  # an unfinished run ...
    other = _argv(tiny_store, tmp_path, None, agent="presence", episodes=3)
    assert main(other) == 2  # ... with other arguments
    assert "started with other arguments" in capsys.readouterr().err
    assert main(argv) == 0  # with its own arguments it runs again from the start
    assert (run_dir / "summary.json").is_file()


def test_overwrite_never_removes_a_folder_that_is_not_a_run(tiny_store, tmp_path) -> None:
    run_dir = tmp_path / "MiSiCAL-Store" / "class3" / "presence_0"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    argv = _argv(tiny_store, tmp_path, None, agent="presence")
    assert main([*argv, "--overwrite"]) == 2
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_a_resumed_runs_events_are_read_after_the_killed_runs(tmp_path) -> None:
    """TensorBoard reads event files in name order; names start with the second of their making,
    so a resumed writer made within the killed run's second must still sort last."""
    from torch.utils.tensorboard import SummaryWriter

    from misical_gym.train.run import _truncate_tensorboard

    folder = tmp_path / "tb_1"
    killed = SummaryWriter(str(folder))
    for step in (32, 64, 96):
        killed.add_scalar("al/hit_rate", step / 100, step)
    killed.close()
    (made,) = folder.iterdir()  # as if made by another process whose pid sorts last
    *name, _pid, counter = made.name.split(".")  # the host may hold dots; pid and counter do not
    made.rename(folder / ".".join([*name, "9" * 12, counter]))
    _truncate_tensorboard(tmp_path, 64)
    resumed = SummaryWriter(str(folder))
    resumed.add_scalar("al/hit_rate", 0.96, 96)
    resumed.close()
    assert [step for step, _ in _curves(tmp_path)["al/hit_rate"]] == [32, 64, 96]
