"""``misical sweep``: a tiny grid end to end, resume, bad grids, tau=1.0, Optuna, --retrain."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from misical_gym.cli import main
from misical_gym.train.sweep import HARD_COPY_INTERVAL, parse_grid, sweep

# Few steps, and learning from step 10, so that every point takes gradient steps and copies.
STEPS = {"budget": 6, "seeds": 2, "pool_size": 6, "pretrain_steps": 30, "online_steps": 10}
GRID = {"gamma": [0, 0.9], "learning_starts": [10], "batch_size": [8]}


@pytest.fixture(scope="module")
def swept(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    argv = ["sweep", "--store", str(tiny_store.path), "--targets", "class3,class5"]
    argv += ["--grid", "gamma=0,0.9", "learning_starts=10", "batch_size=8"]
    argv += ["--env-grid", "features=all,presence", "--seeds", "2", "--budget", "6"]
    argv += ["--pool-size", "6", "--pretrain-steps", "30", "--online-steps", "10"]
    assert main([*argv, "--out", str(out)]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_outputs_hold_every_point_and_agree(swept) -> None:
    out, summary = swept
    points = json.loads((out / "points.json").read_text())
    assert len(points) == 4 * 2  # (gamma x features) x targets
    assert summary["axes"] == ["gamma", "features"] and summary["points"] == 4
    with open(out / "points.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["point"] for r in table] == [p["point"] for p in points]
    assert table[0]["point"] == "gamma=0 features=all"  # the swept axes only
    for row, point in zip(table, points, strict=True):
        assert float(row["target_pixels_mean"]) == pytest.approx(point["target_pixels_mean"])
        assert point["target_pixels_mean"] == np.mean(point["seed_target_pixels"])
        assert point["target_pixels_over_random"] == pytest.approx(
            point["target_pixels_mean"] - np.mean(point["random_seed_target_pixels"])
        )
    # Ties go to the first point in grid order (gamma=0 and 0.9 can pick alike on this store).
    best = max(
        dict.fromkeys(p["point"] for p in points),
        key=lambda label: np.mean(
            [p["target_pixels_over_random"] for p in points if p["point"] == label]
        ),
    )
    assert summary["best_point"] == best
    report = (out / "summary.md").read_text()
    assert f"**Best point**: `{best}`" in report
    for target in ("class3", "class5"):
        mine = [p for p in points if p["target"] == target]
        spread = summary["spread"][target]
        assert spread["across_settings"] == pytest.approx(
            np.std([p["target_pixels_mean"] for p in mine])
        )
        assert spread["across_seeds"] == pytest.approx(
            np.mean([np.std(p["seed_target_pixels"]) for p in mine])
        )
        assert (out / f"heatmap_{target}__gamma__features.png").stat().st_size > 1000


def test_a_presence_point_trains_on_fewer_columns(swept) -> None:
    out, _ = swept
    configs = [yaml.safe_load(p.read_text()) for p in out.glob("training/*/*/*/*/config.yaml")]
    features = sorted(str(c["env_kwargs"].get("features")) for c in configs)
    assert features == ["all"] * 8 + ["presence"] * 8  # 2 gammas x 2 targets x 2 seeds each


def test_a_second_run_resumes_and_a_new_value_runs_only_its_jobs(
    swept, tiny_store, jobs_run
) -> None:
    out, summary = swept
    kwargs = {
        **STEPS,
        "targets": ["class3", "class5"],
        "env_grid": {"features": ["all", "presence"]},
    }
    again = sweep(tiny_store.path, out, grid=GRID, **kwargs)
    assert jobs_run == [] and again["best_point"] == summary["best_point"]
    sweep(tiny_store.path, out, grid={**GRID, "gamma": [0, 0.9, 0.5]}, **kwargs)
    assert {(j.policy, j.overrides.get("gamma")) for j in jobs_run} == {("ddqn", 0.5)}
    assert len(jobs_run) == 2 * 2 * 2  # features x targets x seeds


def test_tau_one_is_a_hard_copy(tiny_store, tmp_path, jobs_run) -> None:
    grid = {"tau": [0.005, 1.0], "learning_starts": [10], "batch_size": [8]}
    summary = sweep(
        tiny_store.path, tmp_path, grid=grid, targets=["class3"], **{**STEPS, "seeds": 1}
    )
    hard = [j.overrides for j in jobs_run if j.overrides.get("tau") == 1.0]
    assert hard == [
        {
            "tau": 1.0,
            "target_update": "hard",
            "target_update_interval": HARD_COPY_INTERVAL,
            "learning_starts": 10,
            "batch_size": 8,
        }
    ]
    soft = [j.overrides for j in jobs_run if j.overrides.get("tau") == 0.005]
    assert "target_update" not in soft[0]
    assert summary["hard_copy_interval"] == HARD_COPY_INTERVAL
    assert (tmp_path / "heatmap_class3__tau.png").is_file()  # one axis: one row


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--grid", "gamma=0,2"], "0 <= gamma <= 1"),
        (["--grid", "gama=0,0.9"], "unknown hyperparameter(s) gama for 'ddqn'; valid keys: "),
        (["--grid", "seed=1,2"], "unknown hyperparameter(s) seed"),
        (["--grid", "gamma"], "--grid takes KEY=V1,V2,... items"),
        (["--grid", "gamma=0,0"], "a value repeats"),
        (["--grid", "gamma=0", "gamma=1"], "names 'gamma' twice"),
        (["--env-grid", "budget=4,8"], "unknown env argument(s) budget; valid keys: "),
        (["--env-grid", "reward=categorical,linear"], "unknown reward 'linear'"),
        (["--env-grid", "features=all,bald"], "unknown features 'bald'"),
        (["--agent", "random"], "--agent must be a learned agent"),
        (["--optuna", "0"], "--optuna must be at least 1"),
        (["--retrain-epochs", "2"], "--retrain-weighting and --retrain-weights-from need"),
        (["--retrain-weighting", "sqrt"], "--retrain-weighting and --retrain-weights-from need"),
        (["--retrain-learning-rate", "1e-4"], "--retrain-weights-from need --retrain"),
        (["--retrain-weights-from", "init"], "--retrain-weights-from need --retrain"),
    ],
)
def test_bad_grids_are_clear_errors_before_any_work(
    tiny_store, tmp_path, capsys, jobs_run, extra, message
) -> None:
    argv = ["sweep", "--store", str(tiny_store.path), "--targets", "class3"]
    assert main([*argv, *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("misical: error:") and message in err, err
    assert jobs_run == [] and not (tmp_path / "out" / "jobs").exists()


def test_parse_grid_reads_yaml_scalars_and_column_lists() -> None:
    grid = parse_grid(["gamma=0,0.9", "features=all,bald_mean+target_presence"], "--grid")
    assert grid == {"gamma": [0, 0.9], "features": ["all", ["bald_mean", "target_presence"]]}


def test_parse_grid_reads_exponents_without_a_dot_as_floats() -> None:
    # YAML 1.1 (PyYAML's) reads 1e-4 as a string; users write learning rates so.
    grid = parse_grid(["learning_rate=1e-4,3E-4,2.5e-3", "seed_name=1e5x"], "--grid")
    assert grid == {"learning_rate": [1e-4, 3e-4, 2.5e-3], "seed_name": ["1e5x"]}
    assert all(isinstance(v, float) for v in grid["learning_rate"])


def test_optuna_searches_the_grid_values(tiny_store, tmp_path, jobs_run) -> None:
    grid = {"gamma": [0, 0.5, 0.9], "learning_starts": [10], "batch_size": [8]}
    kwargs = {**STEPS, "seeds": 1, "targets": ["class3"]}
    summary = sweep(tiny_store.path, tmp_path, grid=grid, optuna_trials=3, **kwargs)
    gammas = {j.overrides["gamma"] for j in jobs_run if j.policy == "ddqn"}
    assert 1 <= len(gammas) <= 3 and gammas <= {0, 0.5, 0.9}
    assert summary["points"] == len(gammas) and summary["optuna_trials"] == 3
    ran = len(jobs_run)
    sweep(tiny_store.path, tmp_path, grid=grid, optuna_trials=3, **kwargs)
    assert len(jobs_run) == ran  # the seeded search replays its proposals from the job files


def test_retrain_reports_iou_for_the_best_point_of_each_reward(prepared, tmp_path) -> None:
    rare = prepared.class_names[prepared.rare_classes[0]]
    summary = sweep(
        prepared.path,
        tmp_path,
        grid={"gamma": [0, 0.9], "learning_starts": [10], "batch_size": [8]},
        env_grid={"reward": ["categorical", "binary"]},
        targets=[rare, "sky"],
        retrain=True,
        retrain_epochs=1,
        retrain_weighting="sqrt",
        retrain_weights_from="init",
        **{**STEPS, "seeds": 1, "pool_size": 8},
    )
    block = summary["retrain"]
    assert (block["epochs"], block["learning_rate"], block["weighting"]) == (1, 3e-3, "sqrt")
    assert block["weights_from"] == "init"
    rows = [json.loads(f.read_text())["row"] for f in (tmp_path / "jobs").glob("*.json")]
    retrained = [r for r in rows if r["iou"] is not None or r["retrain_epochs"] is not None]
    assert retrained and all(
        (r["retrain_weighting"], r["retrain_weights_from"]) == ("sqrt", "init") for r in retrained
    )
    assert block["classes"] == [rare]  # the rare classes among the targets
    assert set(block["best"]) == {"categorical", "binary", "random"}
    points = json.loads((tmp_path / "points.json").read_text())
    for scheme in ("categorical", "binary"):
        mine = [p for p in points if p["reward"] == scheme and p["target"] == rare]
        assert (
            block["best"][scheme]["point"]
            == max(mine, key=lambda p: p["target_pixels_mean"])["point"]
        )
        if scheme == "binary":  # a binary reward counts the picks that hold the target
            for p in mine:
                assert p["reward_mean"] == pytest.approx(p["hit_rate_mean"] * STEPS["budget"])
        iou = block["best"][scheme]["iou"][rare]
        assert iou is None or 0.0 <= iou <= 1.0
    heading = "## IoU after retraining (1 epochs, learning rate 0.003, sqrt class weights from the "
    heading += "init labels)"
    assert heading in (tmp_path / "summary.md").read_text()


def test_a_grid_of_one_point_is_named_by_its_settings(tiny_store, tmp_path) -> None:
    env_grid = {"reward_bins": [[0, 0.01]]}
    grid = {"learning_starts": [10], "batch_size": [8]}
    kwargs = {**STEPS, "seeds": 1, "targets": ["class3"]}
    summary = sweep(tiny_store.path, tmp_path, grid=grid, env_grid=env_grid, **kwargs)
    assert summary["best_point"] == "learning_starts=10 batch_size=8 reward_bins=0+0.01"
    plain = sweep(tiny_store.path, tmp_path / "plain", targets=["class3"], **{**STEPS, "seeds": 1})
    assert plain["best_point"] == "defaults"
