"""``misical rounds``: select, label from held-back masks and update, against random."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from misical_gym.cli import main
from misical_gym.store import MANIFEST, FeatureStore
from tests.test_pool_cli import NEW, pool_data, prepared, run_killed, truth  # noqa: F401

TARGET = "car"


@pytest.fixture(scope="module")
def answers(pool_data: Path) -> Path:  # noqa: F811
    """The unlabelled images' held-back masks, as an annotator would return them."""
    folder = pool_data / "answers"
    if not folder.is_dir():
        folder.mkdir()
        for stem in NEW:
            shutil.copy(pool_data / "truth" / f"{stem}.png", folder / f"{stem}.png")
    return folder


def rounds(store: Path, answers: Path, out: Path, *extra: str, n: int = 3) -> list[str]:
    argv = ["rounds", "--store", str(store), "--annotations", str(answers), "--target", TARGET]
    return [*argv, "--rounds", str(n), "--budget", "8", "--out", str(out), "--threads", "1", *extra]


def picked(out: Path, r: int, arm: str) -> list[int]:
    data = json.loads((out / f"round_{r}" / f"{arm}_picks.json").read_text())
    return [p["patch_id"] for p in data["picks"]]


def test_rounds_label_the_picks_from_the_held_back_masks(prepared, answers, pool_data, tmp_path):  # noqa: F811
    before = (prepared / MANIFEST).read_bytes()
    out = tmp_path / "out"
    argv = rounds(prepared, answers, out, "--pretrain-steps", "40", "--online-steps", "20")
    assert main(argv) == 0
    assert (prepared / MANIFEST).read_bytes() == before  # the user's store is not changed
    records = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in records] == [1, 2, 3]
    # Round 1 ranks with the pretrained policy, later rounds with the one updated before them.
    assert records[0]["policy_source"].endswith("ddqn_0")
    assert [Path(r["policy_source"]).name for r in records[1:]] == ["update_1", "update_2"]
    assert (out / "runs" / "update_2" / "summary.json").is_file()
    source = FeatureStore.open(prepared)
    car = source.class_index(TARGET)
    for arm in ("policy", "random"):
        store = FeatureStore.open(out / arm / "store")
        ids = [picked(out, r, arm) for r in (1, 2, 3)]
        flat = np.concatenate(ids)
        assert np.unique(flat).size == 24  # no patch picked twice
        assert not np.asarray(source.labelled)[flat].any()  # only unlabelled patches ranked
        assert store.labelled[flat].all()
        # Each round's count is the held-back truth of its picks, through `label`.
        for r, round_ids in enumerate(ids):
            expect = 0
            for i, (y0, x0, y1, x1) in zip(
                round_ids, store.boxes(np.array(round_ids)), strict=True
            ):
                stem = store.image_ids[int(store.patches[i, 0])]
                expect += int((truth(pool_data, stem)[y0:y1, x0:x1] == car).sum())
            assert records[r][arm]["target_pixels"] == expect, (arm, r)
            assert records[r][arm]["picks"] == records[r][arm]["labelled"] == 8
        # Only this arm's picks were labelled in its copy.
        assert store.split_ids("pool", labelled=False).size == len(NEW) * 16 - 24
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert len(rows) == 6 and rows[-1]["cumulative_target_pixels"] == str(
        sum(r["random"]["target_pixels"] for r in records)
    )
    summary = (out / "summary.md").read_text()
    assert "| round | ddqn | random |" in summary and summary.count("\n| ") == 4


def test_rounds_resume_and_grow_without_redoing_a_round(prepared, answers, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    assert main(rounds(prepared, answers, out, "--agent", "presence", n=2)) == 0
    first = (out / "round_1" / "result.json").read_bytes()
    # Killed after round 2's labels, before its record: finished from its picks file.
    (out / "round_2" / "result.json").unlink()
    assert main(rounds(prepared, answers, out, "--agent", "presence", n=3)) == 0
    assert (out / "round_1" / "result.json").read_bytes() == first
    records = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in records] == [1, 2, 3]
    assert records[1]["policy"]["labelled"] == 8 and records[1]["policy"]["newly_labelled"] == 0
    fresh = tmp_path / "fresh"
    assert main(rounds(prepared, answers, fresh, "--agent", "presence", n=3)) == 0
    for r in (1, 2, 3):
        assert picked(out, r, "policy") == picked(fresh, r, "policy")
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in records]
    again = json.loads((fresh / "rounds.json").read_text())
    # The same numbers as a run never stopped (round 2's newly labelled aside: 0 on the rerun).
    for a, b in zip(strip, again, strict=True):
        for arm in ("policy", "random"):
            assert a[arm]["target_pixels"] == b[arm]["target_pixels"]


def test_a_killed_round_finishes_as_a_run_never_stopped(prepared, answers, tmp_path):  # noqa: F811
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    argv = rounds(prepared, answers, out, "--agent", "presence", n=2)
    run_killed(argv, "in_rename")  # inside round 1's first label: its store update
    assert not (out / "round_1" / "result.json").exists()
    assert main(argv) == 0
    assert main(rounds(prepared, answers, fresh, "--agent", "presence", n=2)) == 0
    load = lambda d: [  # noqa: E731
        {arm: r[arm]["target_pixels"] for arm in ("policy", "random")}
        for r in json.loads((d / "rounds.json").read_text())
    ]
    assert load(out) == load(fresh)
    for arm in ("policy", "random"):
        FeatureStore.open(out / arm / "store")  # opens: nothing half-written


def test_hide_pool_labels_plays_a_labelled_store_as_unlabelled(
    prepared,  # noqa: F811
    answers,
    pool_data,  # noqa: F811
    tmp_path,
) -> None:
    """A store whose pool is labelled: the copies forget it, the masks bring it back."""
    out = tmp_path / "out"
    labels = pool_data / "data" / "labels"
    argv = rounds(prepared, labels, out, "--hide-pool-labels", "--pretrain-steps", "40")
    argv += ["--online-steps", "20"]
    argv += ["--annotations", str(answers)]
    assert main(argv) == 0
    # Trained with no labelled pool patch to evaluate on: evaluated on init.
    summary = json.loads(
        (out / "runs" / "MiSiCAL-Store" / "car" / "ddqn_0" / "summary.json").read_text()
    )
    assert summary["eval_split"] == "init"
    source = FeatureStore.open(prepared)
    store = FeatureStore.open(out / "policy" / "store")
    flat = np.concatenate([picked(out, r, "policy") for r in (1, 2, 3)])
    known = flat[np.asarray(source.labelled)[flat]]
    assert known.size > 0  # patches whose labels the copy hid were ranked and labelled again
    np.testing.assert_array_equal(np.asarray(store.counts)[known], np.asarray(source.counts)[known])
    pool = store.split_ids("pool")
    assert (
        store.split_ids("pool", labelled=True).size == 24
        and pool.size == source.split_ids("pool").size
    )


def test_rounds_stop_when_the_pool_runs_out(prepared, answers, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "out"
    argv = rounds(prepared, answers, out, "--agent", "presence", "--budget", "20", n=4)
    assert main(argv) == 0
    records = json.loads((out / "rounds.json").read_text())
    assert [r["policy"]["picks"] for r in records] == [20, 20, 8]  # 48 unlabelled patches
    assert "no unlabelled pool patch is left to pick after round 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rounds", "0"], "--rounds must be a positive integer"),
        (["--budget", "0"], "--budget must be a positive integer"),
        (["--online-steps", "-1"], "--online-steps must be non-negative"),
        (["--max-per-image", "0"], "--max-per-image must be positive"),
        (["--target", "cat"], "cat"),
        (["--annotations", "nosuch"], "--annotations nosuch not found"),
    ],
)
def test_rounds_refuse_bad_flags(prepared, answers, tmp_path, capsys, extra, message):  # noqa: F811
    argv = rounds(prepared, answers, tmp_path / "out", "--agent", "presence", *extra)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("misical: error:") and message in err, err
    assert not (tmp_path / "out" / "policy").exists()


def test_rounds_refuse_a_typo_a_labelled_pool_and_other_settings(
    prepared,  # noqa: F811
    answers,
    pool_data,  # noqa: F811
    tmp_path,
    capsys,
) -> None:
    assert main(rounds(tmp_path / "nostore", answers, tmp_path / "o")) == 2
    assert "no feature store" in capsys.readouterr().err
    labelled = shutil.copytree(prepared, tmp_path / "labelled")
    store = FeatureStore.open(labelled)
    store.update(labelled=np.ones(store.num_patches, dtype=bool))
    assert main(rounds(labelled, answers, tmp_path / "o", "--agent", "presence")) == 2
    assert "--hide-pool-labels" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(rounds(prepared, answers, out, "--agent", "presence", n=1)) == 0
    # The target by index is the same setting as by name.
    assert main(rounds(prepared, answers, out, "--agent", "presence", "--target", "2", n=1)) == 0
    capsys.readouterr()
    assert main(rounds(prepared, answers, out, "--agent", "bald", n=2)) == 2
    assert "other settings (agent differ)" in capsys.readouterr().err
