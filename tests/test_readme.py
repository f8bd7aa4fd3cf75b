"""The README's "In a few lines" examples run as written (on a small store, training shortened)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from misical_gym.prepare import PrepareConfig, prepare_synthetic

ROOT = Path(__file__).resolve().parents[1]
# Snippets run in one namespace, in order, as a reader pastes them; every learn() is cut to a
# few steps. The loop is guarded: SubprocVecEnv's workers import the main module.
RUNNER = """
import json, re, sys
if __name__ == "__main__":
    namespace = {"__name__": "__main__"}
    for block in json.loads(sys.stdin.read()):
        exec(re.sub(r"\\.learn\\([\\d_]+\\)", ".learn(64)", block), namespace)
    rollout = namespace.get("rollout")
    print(json.dumps({"rollout_steps": None if rollout is None else int(rollout.shape[0])}))
"""
# The self-contained examples that load heavy clients run on their own; the rest run together.
OWN = ("torchrl", "SubprocVecEnv")


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


@pytest.fixture(scope="module")
def synthetic_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``$MISICAL_HOME`` whose synthetic store is a tiny prepared world (40 images, one
    epoch): the snippets find it instead of preparing the full one."""
    home = tmp_path_factory.mktemp("home")
    config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3, threads=1)
    prepare_synthetic(home / "synthetic", images=40, config=config, progress=False)
    return home


def run_python(argv: list[str], home: Path, cwd: Path, stdin: str = "") -> str:
    """``python argv`` with ``$MISICAL_HOME`` at ``home``; its stdout, once it exits 0."""
    result = subprocess.run(
        [sys.executable, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "MISICAL_HOME": str(home)},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.parametrize(
    "client", [None, "torchrl", pytest.param("SubprocVecEnv", marks=pytest.mark.slow)]
)
def test_python_examples_run(client, synthetic_home, tmp_path) -> None:
    blocks = code_blocks(section("In a few lines"), "python")
    if client is None:
        chosen = [b for b in blocks if not any(word in b for word in OWN)]
        assert len(chosen) >= 5  # env, SB3, DDQN, masks, vector env
    else:
        (block,) = [b for b in blocks if client in b]
        chosen = [block]
    stdout = run_python(["-c", RUNNER], synthetic_home, tmp_path, stdin=json.dumps(chosen))
    report = json.loads(stdout.strip().splitlines()[-1])
    if client == "torchrl":
        assert report["rollout_steps"] == 100  # masked random actions, on through resets


def test_rl_zoo3_example_runs(synthetic_home, tmp_path) -> None:
    (command,) = [b for b in code_blocks(section("In a few lines"), "bash") if "rl_zoo3.train" in b]
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:3] == ["python", "-m", "rl_zoo3.train"]
    # Shorter: the last value of a repeated flag wins in argparse.
    fast = ["-n", "100", "--eval-freq", "50", "--eval-episodes", "2", "--num-threads", "1"]
    fast += ["-f", str(tmp_path / "logs"), "--hyperparams", "learning_starts:20", "buffer_size:500"]
    run_python([*argv[1:], *fast], synthetic_home, ROOT)
    (evaluations,) = (tmp_path / "logs" / "dqn").rglob("evaluations.npz")
    assert np.load(evaluations)["results"].shape == (2, 2)  # 2 evaluations of 2 pool episodes
