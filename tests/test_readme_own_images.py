"""The README's "Use it on your own images" commands run as written, on a tiny folder.

Every command of the section's bash blocks runs, in order, in a folder laid out as the section
names it (``labelled/``, ``classes.txt``, ``photos/``, ``answers/``, ``more-photos/``), with
only the costs cut (tiny prepare settings, a few training steps). The commands that need Label
Studio or CamVid are left to ``tests/test_labelstudio_server.py`` and the measured runs; the
test names them, so a new command cannot be skipped silently.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from misical_gym.cli import main
from misical_gym.store import FeatureStore
from tests.data.test_masks import VALUES, index_folder, write_image, write_mask
from tests.test_readme import code_blocks, section

# The cost cuts; each must apply, so the README and this test cannot drift apart unseen.
CUTS = {
    "--out mystore": "--out mystore --epochs 1 --mc-samples 2 --init-fraction 0.3 "
    "--image-size 16 --threads 1 --test-fraction 0.25",
    "--pretrain-steps 3000": "--pretrain-steps 40",
    "--online-steps 2000": "--online-steps 20",
    "ddqn_0_online2000": "ddqn_0_online20",
}
# Commands that need a Label Studio server or the CamVid dataset.
ELSEWHERE = ("label-studio", "ls-env", "CamVid", "export.json", "pytest")


def commands() -> list[str]:
    """The section's shell commands, continuation lines joined, comments dropped."""
    text = "\n".join(code_blocks(section("Use it on your own images"), "bash"))
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def own_images(root: Path) -> None:
    """12 labelled 8x12 images, 3 unlabelled photos with their answers, 2 more photos."""
    index_folder(
        root / "labelled", {f"i{k}": np.minimum(np.roll(VALUES, k, 1), 2) for k in range(12)}
    )
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    for k in range(3):
        write_image(root / "photos" / f"IMG_{k}.png", VALUES.shape, seed=50 + k)
        write_mask(root / "answers" / f"IMG_{k}.png", np.minimum(np.roll(VALUES, k, 0), 2))
    for k in range(2):
        write_image(root / "more-photos" / f"NEW_{k}.png", VALUES.shape, seed=60 + k)


def test_the_own_images_section_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    own_images(tmp_path)
    monkeypatch.chdir(tmp_path)
    lines, used, skipped = commands(), set(), []
    for line in lines:
        for old, new in CUTS.items():
            if old in line:
                line, used = line.replace(old, new), used | {old}
        if any(word in line for word in ELSEWHERE):
            skipped.append(line)
            continue
        argv = shlex.split(line, comments=True)
        if argv[0] == "python":  # python -c CODE > FILE
            assert argv[1] == "-c" and argv[3] == ">", line
            result = subprocess.run([sys.executable, "-c", argv[2]], capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            Path(argv[4]).write_text(result.stdout)
            continue
        assert argv[0] == "misical", line
        assert main(argv[1:]) == 0, (line, capsys.readouterr().err[-2000:])
    assert used == set(CUTS)
    assert len(skipped) == 7, skipped  # venv and server start, label from export, 3 CamVid runs
    store = FeatureStore.open(tmp_path / "mystore")
    assert store.image_ids[-2:] == ("NEW_0", "NEW_1")
    assert store.labelled[store.split_ids("pool")].sum() > 0
    picks = json.loads((tmp_path / "picks-2.json").read_text())["picks"]
    first = {p["patch_id"] for p in json.loads((tmp_path / "picks.json").read_text())["picks"]}
    assert picks and not first & {p["patch_id"] for p in picks}  # --exclude held
    assert json.loads((tmp_path / "tasks.json").read_text())[0]["data"]["store_id"] == "mystore"
    assert "<BrushLabels" in (tmp_path / "config.xml").read_text()
    assert (tmp_path / "rounds-car" / "summary.md").is_file()


@pytest.mark.parametrize("word", ELSEWHERE)
def test_every_skipped_word_names_a_command(word) -> None:
    assert any(word in line for line in commands())
