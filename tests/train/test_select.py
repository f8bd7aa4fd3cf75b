"""``misical select``: picks from the pool, formats, determinism, saved policies."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from misical_gym.cli import main
from misical_gym.train.select import select_patches


def test_picks_are_distinct_pool_patches_with_boxes(tiny_store) -> None:
    selection = select_patches(tiny_store.path, "presence", "class3", 40, pool_size=8)
    ids = [p["patch_id"] for p in selection["picks"]]
    assert len(ids) == len(set(ids)) == 40
    assert set(ids) <= set(tiny_store.split_ids("pool").tolist())
    for pick in selection["picks"]:
        np.testing.assert_array_equal(pick["box"], tiny_store.boxes([pick["patch_id"]])[0])
        assert pick["image_id"] == tiny_store.image_ids[tiny_store.patches[pick["patch_id"], 0]]
    # Presence-greedy: each pick's score is its target presence, the best of its candidates.
    presence = np.asarray(tiny_store.presence)[ids, 3]
    np.testing.assert_allclose([p["score"] for p in selection["picks"]], presence, rtol=1e-6)


def test_a_budget_above_the_pool_picks_every_pool_patch(tiny_store) -> None:
    pool = tiny_store.split_ids("pool")
    selection = select_patches(tiny_store.path, "random", "class3", pool.size + 10, pool_size=8)
    assert sorted(p["patch_id"] for p in selection["picks"]) == sorted(pool.tolist())


@pytest.mark.parametrize("fmt", ["json", "csv", "coco"])
def test_same_seed_same_file(tiny_store, tmp_path, fmt) -> None:
    outputs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.{fmt}"
        argv = [
            "select",
            "--store",
            str(tiny_store.path),
            "--policy",
            "random",
            "--target",
            "class3",
            "--budget",
            "25",
            "--out",
            str(out),
            "--format",
            fmt,
            "--seed",
            str(seed),
        ]
        assert main(argv) == 0
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] != outputs[2]
    if fmt == "csv":
        rows = list(csv.DictReader(outputs[0].splitlines()))
        assert len(rows) == 25 and set(rows[0]) >= {"image_id", "y0", "x0", "y1", "x1", "score"}
    if fmt == "coco":
        coco = json.loads(outputs[0])
        assert len(coco["annotations"]) == 25
        assert len(coco["images"]) == len({a["image_id"] for a in coco["annotations"]})
        assert all(len(a["bbox"]) == 4 and a["bbox"][2] > 0 for a in coco["annotations"])


def test_a_saved_ddqn_run_selects(tiny_store, saved_ddqn_run) -> None:
    run_dir = saved_ddqn_run
    # The run trained with budget 8; selection asks for 30 picks from the same store.
    selection = select_patches(
        tiny_store.path, str(run_dir), "class3", 30, pool_size=8, device="cpu"
    )
    assert len(selection["picks"]) == 30 and selection["target"] == "class3"


def test_unknown_policy_is_a_clear_error(tiny_store, tmp_path, capsys) -> None:
    argv = [
        "select",
        "--store",
        str(tiny_store.path),
        "--policy",
        "greedy",
        "--target",
        "class3",
        "--budget",
        "5",
        "--out",
        str(tmp_path / "x.json"),
    ]
    assert main(argv) == 2
    assert "neither a heuristic (random, bald" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
