"""The benchmark scripts run and report what they measured (tiny sizes)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from misical_gym.train.agents import default_hyperparams

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def report(script: str, *argv: str) -> dict:
    """The JSON a benchmark script prints, run as a user runs it."""
    command = [sys.executable, str(BENCHMARKS / script), *argv]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def load_benchmark(script: str):
    """A benchmark script imported as a module, for its functions."""
    import importlib.util

    path = BENCHMARKS / script
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_env_reports_the_given_stores_patches(tiny_store) -> None:
    argv = ["--store", str(tiny_store.path), "--steps", "300", "--vector-envs", "4"]
    bench = report("bench_env.py", *argv)
    assert bench["store"]["patches"] == tiny_store.num_patches
    assert bench["env_path_imported_torch"] is False


def test_bench_agents_times_the_ddqn_against_supervised(tiny_store) -> None:
    argv = ["--store", str(tiny_store.path), "--time-to-supervised", "class3", "--seeds", "1"]
    argv += ["--pretrain-steps", "40", "--online-steps", "20", "--eval-every", "20"]
    (run,) = report("bench_agents.py", *argv, "--episodes", "2")["runs"]
    assert run["goal_reward"] == 0.9 * run["supervised_reward"]
    assert [steps for steps, _, _ in run["curve"]] == [20, 40, 60]
    first = next((p for p in run["curve"] if p[2] >= run["goal_reward"]), None)
    assert run["reached"] == (
        None if first is None else {"env_steps": first[0], "seconds": first[1], "reward": first[2]}
    )


def test_bench_agents_reads_finished_runs_instead_of_training_again(tiny_store, tmp_path) -> None:
    argv = ["--store", str(tiny_store.path), "--targets", "class3", "--agents", "random,presence"]
    argv += ["--seeds", "1", "--pretrain-steps", "64", "--online-steps", "32", "--episodes", "2"]
    argv += ["--workers", "1", "--runs", str(tmp_path / "runs"), "--plot", str(tmp_path / "p.png")]

    def bench(*more: str) -> dict:
        return report("bench_agents.py", *argv, *more)

    first = bench()
    run = tmp_path / "runs" / "MiSiCAL-Synthetic" / "class3" / "presence_0"
    written = (run / "summary.json").stat().st_mtime_ns
    assert bench()["results"] == first["results"]
    assert (run / "summary.json").stat().st_mtime_ns == written  # read, not trained again
    assert set(first["results"]["class3"]) == {"random", "presence"}
    # Every agent on the reward named, recorded in its run.
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["env_kwargs"]["reward"] == "categorical"
    argv[argv.index("--runs") + 1] = str(tmp_path / "share")
    bench("--reward", "share")
    config = yaml.safe_load(
        (tmp_path / "share" / run.relative_to(tmp_path / "runs") / "config.yaml").read_text()
    )
    assert config["env_kwargs"]["reward"] == "share"


def test_bench_select_selects_in_both_modes() -> None:
    bench = report("bench_select.py", "--images", "40", "--budget", "20")
    assert bench["store_patches"] == 640 and 0 < bench["pool_patches"] < 640
    assert set(bench["seconds"]["rank"]) == {"random", "presence", "ddqn"}
    # The DDQN a user's `misical train` builds, not the constructor's smaller default.
    packaged = default_hyperparams("ddqn", "MiSiCAL-COCO10k")["policy_kwargs"]
    assert bench["ddqn_policy_kwargs"] == packaged != {}


def test_presence_signal_scores_the_split_it_is_given(tiny_store) -> None:
    import numpy as np

    for split in ("init", "pool"):
        argv = ["--store", str(tiny_store.path), "--classes", "class3", "--split", split]
        signal = report("presence_signal.py", *argv)
        patches = tiny_store.split_ids(split)
        holds = np.asarray(tiny_store.counts[patches, tiny_store.class_index("class3")]) > 0
        assert signal["split"] == split and signal["patches"] == patches.size
        assert signal["classes"]["class3"]["patches_with_class"] == int(holds.sum())
        assert 0.0 <= signal["classes"]["class3"]["presence_auc"] <= 1.0


def test_retrain_settings_compares_fine_tunings_with_the_frozen_segmenter(tmp_path) -> None:
    from misical_gym.prepare import PrepareConfig, prepare_synthetic

    config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3, threads=1)
    store = prepare_synthetic(tmp_path / "store", images=24, config=config, progress=False)
    argv = ["--store", str(store.path), "--classes", "road,rake", "--budget", "4"]
    argv += ["--settings", "3e-3:inverse,1e-4:sqrt,3e-3:inverse:init"]
    unchanged = report("retrain_settings.py", *argv, "--epochs", "0")
    test_iou = store.manifest["segmenter"]["test_iou"]
    assert unchanged["frozen_iou"] == {
        name: round(test_iou[store.class_index(name)], 4) for name in ("road", "rake")
    }
    for setting in unchanged["settings"]:  # no fine-tuning: exactly the frozen segmenter
        assert setting["iou"] == unchanged["frozen_iou"]
        assert setting["above_frozen"] == 0 and setting["mean_gain_over_frozen"] == 0
    tuned = report("retrain_settings.py", *argv, "--epochs", "1")
    assert [(s["learning_rate"], s["weighting"], s["weights_from"]) for s in tuned["settings"]] == [
        (3e-3, "inverse", "crops"),
        (1e-4, "sqrt", "crops"),
        (3e-3, "inverse", "init"),
    ]
    # The weights' labels change the fine-tuning: the same rate and weighting end elsewhere.
    assert tuned["settings"][0]["iou"] != tuned["settings"][2]["iou"]
    assert min(tuned["oracle_target_pixels"].values()) > 0
    for setting in tuned["settings"]:
        gains = [setting["iou"][c] - tuned["frozen_iou"][c] for c in ("road", "rake")]
        assert setting["above_frozen"] == sum(g > 0 for g in gains)
        assert abs(setting["mean_gain_over_frozen"] - sum(gains) / 2) < 1e-3


@pytest.mark.parametrize("item", ["3e-3:sqrt:labels", "0:sqrt", "x:sqrt", "3e-3:square"])
def test_retrain_settings_rejects_a_bad_setting(item: str) -> None:
    parse_settings = load_benchmark("retrain_settings.py").parse_settings
    with pytest.raises(SystemExit, match="LR:WEIGHTING"):
        parse_settings(f"3e-3:sqrt,{item}")


def test_retrain_breakdown_splits_the_evaluations_picks_errors(tmp_path) -> None:
    from misical_gym.prepare import PrepareConfig, prepare_synthetic
    from misical_gym.store import FeatureStore
    from misical_gym.train.evaluate import evaluate

    config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3, threads=1)
    store = prepare_synthetic(tmp_path / "store", images=24, config=config, progress=False)
    steps = ["--budget", "4", "--pool-size", "6", "--pretrain-steps", "40", "--online-steps", "8"]
    argv = ["--store", str(store.path), "--classes", "road,rake", "--seeds", "2", *steps]
    argv += ["--policies", "ddqn,presence,random", "--cache", str(tmp_path / "eval" / "training")]
    unchanged = report("retrain_breakdown.py", *argv, "--epochs", "0")
    # The same jobs as the evaluation's: the same picks, and the evaluation's trained policies.
    summary = evaluate(
        store.path,
        tmp_path / "eval",
        targets=["road", "rake"],
        policies=("ddqn", "presence", "random"),
        budget=4,
        seeds=2,
        pool_size=6,
        pretrain_steps=40,
        online_steps=8,
    )
    assert summary["policies"]["ddqn"]["classes"] == 2
    with open(tmp_path / "eval" / "results.csv", newline="") as results:
        rows = {
            (r["target"], r["policy"], int(r["seed"])): int(r["target_pixels"])
            for r in csv.DictReader(results)
        }
    test_iou = FeatureStore.open(store.path).manifest["segmenter"]["test_iou"]
    for name, block in unchanged["classes"].items():
        frozen = block["frozen"]
        assert frozen["iou"] == round(test_iou[store.class_index(name)], 4)
        for policy in ("ddqn", "presence", "random"):
            for row in block[policy]["seeds"]:
                assert row["target_pixels"] == rows[(name, policy, row["seed"])]
                # No fine-tuning: exactly the frozen segmenter's errors.
                assert {k: row[k] for k in frozen} == frozen
    tuned = report("retrain_breakdown.py", *argv, "--epochs", "1", "--policies", "random")
    for block in tuned["classes"].values():
        for row in block["random"]["seeds"]:  # the test split's target pixels do not move
            assert row["tp"] + row["fn"] == block["frozen"]["tp"] + block["frozen"]["fn"]


def test_target_errors_splits_a_confusion_matrix() -> None:
    errors = load_benchmark("retrain_breakdown.py").target_errors
    confusion = np.array([[5, 1, 0], [2, 6, 3], [0, 4, 9]])  # (true, predicted)
    split = errors(confusion, 1, ("a", "b", "c"))
    assert (split["tp"], split["fp"], split["fn"]) == (6, 5, 5)
    assert split["iou"] == round(6 / 16, 4) and split["recall"] == round(6 / 11, 4)
    assert split["missed_as"] == {"c": 3, "a": 2}
    assert split["false_alarms_from"] == {"c": 4, "a": 1}


def test_prepare_camvid_times_a_training_step_of_the_default_segmenter() -> None:
    assert 0 < load_benchmark("prepare_camvid.py").time_training_step(1, steps=1) < 60


def test_prepare_camvid_compares_the_presets_step_with_the_probes() -> None:
    report = load_benchmark("prepare_camvid.py").step_report(1, levels=2, batch=2, steps=1)
    probe, preset = report["training_step_seconds"], report["preset_training_step_seconds"]
    assert 0 < preset < probe  # two windows through a shallower network against 16
    assert report["preset_window_cost_vs_probe"] == pytest.approx(
        (preset / 2) / (probe / 16), rel=0.1
    )


def test_presence_headroom_plays_presence_as_the_evaluation_does(tiny_store) -> None:
    import numpy as np

    from misical_gym.train.select import select_patches

    argv = ["--store", str(tiny_store.path), "--classes", "class3", "--seeds", "2"]
    headroom = report("presence_headroom.py", *argv, "--budget", "6", "--pool-size", "8")
    result = headroom["classes"]["class3"]
    assert set(result) == {"presence", "ridge_init", "ridge_pool", "oracle"}
    target = tiny_store.class_index("class3")
    for seed in range(2):
        picks = select_patches(tiny_store.path, "presence", "class3", 6, pool_size=8, seed=seed)
        ids = np.array([p["patch_id"] for p in picks["picks"]])
        pixels = int(tiny_store.counts[ids, target].sum())
        assert result["presence"]["target_pixels"][seed] == pixels
    for scores in result.values():
        assert scores["mean"] == round(float(np.mean(scores["target_pixels"])), 1)
        assert scores["vs_presence"] == round(scores["mean"] / result["presence"]["mean"], 3)


def test_presence_headroom_sets_a_sweeps_seeds_against_presence(tiny_store, tmp_path) -> None:
    argv = ["--store", str(tiny_store.path), "--classes", "class3", "--seeds", "2"]
    argv += ["--budget", "6", "--pool-size", "8"]
    presence = report("presence_headroom.py", *argv)["classes"]["class3"]["presence"]
    ahead = [pixels + 1 for pixels in presence["target_pixels"]]
    points = [{"point": "reward=share", "target": "class3", "seed_target_pixels": ahead}]
    sweep = tmp_path / "points.json"
    sweep.write_text(json.dumps(points))
    result = report("presence_headroom.py", *argv, "--sweep", str(sweep))["classes"]["class3"]
    against = result["sweep"]["reward=share"]
    assert against["target_pixels"] == ahead
    assert against["seeds_ahead"] == 2
    assert against["vs_presence"] == round(np.mean(ahead) / np.mean(presence["target_pixels"]), 3)
    assert 0 < against["p_ahead"] <= against["p_behind"] <= 1
    # Ahead on both seeds by one pixel each: the paired test's smallest p for 2 pairs.
    assert against["p_ahead_paired"] == 0.25 and against["p_behind_paired"] == 1.0


@pytest.mark.parametrize(
    "points, message",
    [
        ("{}", "a list of points"),
        ('[{"point": "p", "target": "class3"}]', "'seed_target_pixels'"),
        ('[{"point": "p", "target": "class3", "seed_target_pixels": [1, 2, 3]}]', "same --seeds"),
    ],
)
def test_presence_headroom_rejects_a_bad_sweep_file(tiny_store, tmp_path, points, message) -> None:
    sweep = tmp_path / "points.json"
    sweep.write_text(points)
    argv = ["--store", str(tiny_store.path), "--seeds", "2", "--sweep", str(sweep)]
    command = [sys.executable, str(BENCHMARKS / "presence_headroom.py"), *argv]
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode != 0 and message in finished.stderr


def test_the_headroom_ridge_fits_a_quadratic_of_the_presence() -> None:
    import numpy as np

    headroom = load_benchmark("presence_headroom.py")
    rng = np.random.default_rng(0)
    rows = rng.random((400, 3)).astype(np.float32)
    counts = 500 * rows[:, 1] ** 2 + 20 * rows[:, 0] * rows[:, 1]
    scorer = headroom.RidgeScorer((8, 3), np.arange(3), presence_column=1)
    scorer.fit(rows, counts, rng)
    assert scorer.penalty == min(headroom.RIDGE_PENALTIES)
    np.testing.assert_allclose(scorer.scores(rows[None])[0], counts, atol=1.0)
