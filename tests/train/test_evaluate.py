"""``misical evaluate``: end to end, resume, executors, and reports that agree with results."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

import misical_gym.train.evaluate as evaluate_module
from misical_gym.cli import main
from misical_gym.data import store_image
from misical_gym.train.evaluate import evaluate

KW = {"targets": ["class3", "class5"], "budget": 12, "seeds": 2, "pool_size": 8}
LEARNED = {**KW, "targets": ["class3"], "seeds": 1, "pretrain_steps": 60, "online_steps": 20}


@pytest.fixture(scope="module")
def evaluated(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    policies = ("random", "presence", "bald", "oracle")
    summary = evaluate(tiny_store.path, out, policies=policies, **KW)
    return out, summary


def test_outputs_hold_the_same_numbers(evaluated, tiny_store) -> None:
    out, summary = evaluated
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 * 4 * 2
    with open(out / "results.csv") as f:
        assert next(csv.DictReader(f))["policy"] == rows[0]["policy"]
    assert set(rows[0]) >= {
        "target",
        "target_id",
        "policy",
        "seed",
        "target_pixels",
        "hit_rate",
        "iou",
    }
    for row in rows:
        assert row["iou"] is None
        assert 0 <= row["hit_rate"] <= 1
    oracle = [r for r in rows if r["policy"] == "oracle"]
    random = [r for r in rows if r["policy"] == "random"]
    for target in ("class3", "class5"):

        def mean(rs: list, target: str = target) -> float:
            return sum(r["target_pixels"] for r in rs if r["target"] == target) / 2

        gain = summary["policies"]["oracle"]["gain_over_random"][target]
        assert gain == pytest.approx(mean(oracle) - mean(random))
    assert summary["policies"]["oracle"]["beats_random"] == 2
    assert summary["policies"]["random"]["beats_random"] == 0
    report = (out / "report.md").read_text()
    assert f"| oracle | {summary['policies']['oracle']['beats_random']} |" in report
    assert (out / "gain_over_random.png").stat().st_size > 0
    assert (out / "acquisition.png").stat().st_size > 0


def test_resume_redoes_only_missing_jobs(evaluated, tiny_store, jobs_run) -> None:
    out, summary = evaluated
    killed = out / "jobs" / "003-class3__presence__1.json"
    killed.unlink()  # as if the run was killed before this job finished
    again = evaluate(tiny_store.path, out, policies=("random", "presence", "bald", "oracle"), **KW)
    assert [(j.target, j.policy, j.seed) for j in jobs_run] == [("class3", "presence", 1)]
    assert again == summary


def test_process_pool_gives_the_same_results(evaluated, tiny_store, tmp_path) -> None:
    out, _ = evaluated
    parallel = evaluate(
        tiny_store.path,
        tmp_path,
        policies=("random", "presence", "bald", "oracle"),
        workers=2,
        **KW,
    )
    one = json.loads((out / "results.json").read_text())
    two = json.loads((tmp_path / "results.json").read_text())
    assert sorted(map(json.dumps, one)) == sorted(map(json.dumps, two))
    assert (
        parallel["policies"]["presence"]
        == json.loads((out / "summary.json").read_text())["policies"]["presence"]
    )


@pytest.fixture(scope="module")
def learned(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("learned")
    summary = evaluate(tiny_store.path, out, policies=("random", "ddqn"), **LEARNED)
    return out, summary


def test_learned_policies_are_trained_once_and_cached(learned, tiny_store) -> None:
    out, _ = learned
    runs = list((out / "training").glob("*/*/*/ddqn_0/summary.json"))
    assert len(runs) == 1
    (out / "jobs" / "003-class3__ddqn__0.json").unlink()
    stamp = runs[0].stat().st_mtime_ns
    evaluate(tiny_store.path, out, policies=("random", "ddqn"), **LEARNED)
    assert runs[0].stat().st_mtime_ns == stamp  # the cached training run was reused


def test_cli_errors(tiny_store, tmp_path, capsys) -> None:
    argv = ["evaluate", "--store", str(tiny_store.path), "--out", str(tmp_path), "--policies"]
    assert main([*argv, "presence,greedy"]) == 2
    assert "unknown policy 'greedy'" in capsys.readouterr().err
    assert main([*argv, "presence"]) == 2
    assert "include it" in capsys.readouterr().err


def _rows(out) -> list[str]:
    return sorted(map(json.dumps, json.loads((out / "results.json").read_text())))


def test_ray_gives_the_same_results(evaluated, learned, tiny_store, tmp_path) -> None:
    """The heuristics through the CLI, and one learned policy, each against the local run."""
    import ray  # in the test extra, so this runs wherever the tests run

    out, summary = evaluated
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        argv = ["evaluate", "--store", str(tiny_store.path), "--out", str(tmp_path / "ray")]
        argv += ["--targets", "class3,class5", "--policies", "random,presence,bald,oracle"]
        argv += ["--budget", "12", "--seeds", "2", "--pool-size", "8", "--ray"]
        assert main(argv) == 0
        assert ray.is_initialized()  # a connection opened by the caller is left open
        on_ray = evaluate(
            tiny_store.path,
            tmp_path / "ray-learned",
            policies=("random", "ddqn"),
            use_ray=True,
            **LEARNED,
        )
    finally:
        ray.shutdown()
    assert _rows(tmp_path / "ray") == _rows(out)
    assert json.loads((tmp_path / "ray" / "summary.json").read_text()) == summary
    assert _rows(tmp_path / "ray-learned") == _rows(learned[0])
    assert on_ray == learned[1]
    assert len(list((tmp_path / "ray-learned" / "jobs").glob("*.json"))) == 2


def test_executor_errors(tiny_store, tmp_path, monkeypatch, capsys) -> None:
    argv = ["evaluate", "--store", str(tiny_store.path), "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        main([*argv, "--workers", "2", "--ray"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main([*argv, "--ray-address", "auto"]) == 2
    assert "--ray-address needs --ray" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mutually exclusive"):
        evaluate(tiny_store.path, tmp_path, workers=2, use_ray=True)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    assert main([*argv, "--ray"]) == 2
    assert 'pip install "misical-gym[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "jobs").exists()  # nothing ran


def test_importing_the_package_does_not_import_ray() -> None:
    code = "import misical_gym, misical_gym.train.evaluate, sys; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- --retrain
def test_masked_label_keeps_labels_inside_the_acquired_boxes_only(prepared) -> None:
    import numpy as np

    from misical_gym.segmenter.retrain import masked_label, retraining_set, training_crops

    label = np.arange(64, dtype=np.uint8).reshape(8, 8)
    masked = masked_label(label, [[0, 0, 2, 4], [1, 2, 3, 6]])
    inside = np.zeros((8, 8), dtype=bool)
    inside[0:2, 0:4] = inside[1:3, 2:6] = True
    np.testing.assert_array_equal(masked[inside], label[inside])
    assert (masked[~inside] == 255).all()

    store = prepared
    pool = store.split_ids("pool")
    first = int(store.patches[pool[0], 0])
    mine = pool[store.patches[pool, 0] == first][:2]  # two patches of one image merge
    other = pool[store.patches[pool, 0] != first][:1]
    data = retraining_set(store, [*mine, *other])
    init_images = np.unique(store.patches[store.split_ids("init"), 0])
    assert data.num_init == len(init_images) and len(data.images) == data.num_init + 2
    for row, index in enumerate(init_images):  # init images keep their full labels
        np.testing.assert_array_equal(data.labels[row], store_image(store, int(index))[1])
    for row, index, ids in ((data.num_init, first, mine), (data.num_init + 1, None, other)):
        index = int(store.patches[ids[0], 0]) if index is None else index
        image, label = store_image(store, index)
        keep = np.zeros(label.shape, dtype=bool)
        for y0, x0, y1, x1 in store.boxes(ids):
            keep[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(data.images[row], image)
        np.testing.assert_array_equal(data.labels[row][keep], label[keep])
        assert (data.labels[row][~keep] == 255).all()
    assert sorted(data.patch_boxes[:, 0].tolist()) == [data.num_init] * 2 + [data.num_init + 1]
    images, labels = training_crops(data, (32, 32), np.random.default_rng(0))
    assert images.shape[1:3] == labels.shape[1:] == (32, 32)
    assert len(images) == 3 + min(4 * data.num_init, 64)  # 3 patches, then init tiles


def test_retrain_fills_iou_and_redoes_jobs_without_it(prepared, tmp_path, jobs_run) -> None:
    kwargs = {"targets": ["sky", "grass"], "budget": 4, "seeds": 1, "pool_size": 8}
    policies = ("random", "oracle")
    plain = evaluate(prepared.path, tmp_path, policies=policies, **kwargs)
    assert all(r["iou"] is None for r in json.loads((tmp_path / "results.json").read_text()))
    assert "iou" not in plain["policies"]["oracle"]
    jobs_run.clear()
    argv = ["evaluate", "--store", str(prepared.path), "--out", str(tmp_path)]
    argv += ["--targets", "sky,grass", "--policies", "random,oracle", "--budget", "4"]
    argv += ["--seeds", "1", "--pool-size", "8", "--retrain", "--retrain-epochs", "1"]
    assert main(argv) == 0
    # Job files written without retraining do not count: all four are run again.
    assert [j.retrain_epochs for j in jobs_run] == [1] * 4
    rows = json.loads((tmp_path / "results.json").read_text())
    assert len(rows) == 4 and all(0.0 <= r["iou"] <= 1.0 for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for policy in policies:
        pixels, iou = summary["policies"][policy], summary["policies"][policy]["iou"]
        assert set(iou) == set(pixels) - {"iou"}
        assert iou["classes"] == 2 and set(iou["gain_over_random"]) == {"sky", "grass"}
    assert summary["retrain_epochs"] == 1
    assert (summary["retrain_learning_rate"], summary["retrain_weighting"]) == (3e-3, "inverse")
    assert summary["retrain_weights_from"] == "crops"
    heading = "## IoU after retraining (1 epochs, learning rate 0.003, inverse class weights)"
    assert heading in (tmp_path / "report.md").read_text()
    job_rows = [json.loads(f.read_text())["row"] for f in (tmp_path / "jobs").glob("*.json")]
    assert len(job_rows) == 4 and all(
        (r["retrain_learning_rate"], r["retrain_weighting"]) == (3e-3, "inverse") for r in job_rows
    )
    again = evaluate(
        prepared.path, tmp_path, policies=policies, retrain=True, retrain_epochs=2, **kwargs
    )
    assert [j.retrain_epochs for j in jobs_run] == [1] * 4 + [2] * 4  # other epochs: again
    jobs_run.clear()
    for setting in (
        {"retrain_learning_rate": 3e-4},
        {"retrain_weighting": "sqrt"},
        {"retrain_weights_from": "init"},
    ):
        evaluate(
            prepared.path,
            tmp_path,
            policies=policies,
            retrain=True,
            retrain_epochs=2,
            **setting,
            **kwargs,
        )
        # Another learning rate, weighting or weights' source runs every job again, and the
        # rows say so.
        assert len(jobs_run) == 4 and all(
            getattr(job, name) == value for job in jobs_run for name, value in setting.items()
        )
        job_rows = [json.loads(f.read_text())["row"] for f in (tmp_path / "jobs").glob("*.json")]
        assert all(r[name] == value for r in job_rows for name, value in setting.items())
        jobs_run.clear()
    assert "inverse class weights from the init labels)" in (tmp_path / "report.md").read_text()
    assert evaluate(prepared.path, tmp_path, policies=policies, **kwargs) == plain
    assert jobs_run == [] and "iou" in again["policies"]["random"]
    assert all(r["iou"] is None for r in json.loads((tmp_path / "results.json").read_text()))


def test_retrain_policies_limits_retraining(prepared, tmp_path, jobs_run) -> None:
    kwargs = {"targets": ["sky"], "budget": 4, "seeds": 1, "pool_size": 8, "retrain": True}
    policies = ("random", "oracle", "presence")
    summary = evaluate(
        prepared.path,
        tmp_path,
        policies=policies,
        retrain_epochs=1,
        retrain_policies=("random",),
        **kwargs,
    )
    retrained = sorted((j.policy, j.retrain, j.retrain_epochs) for j in jobs_run)
    assert retrained == [
        ("oracle", False, None),
        ("presence", False, None),
        ("random", True, 1),
    ]
    rows = {r["policy"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert rows["oracle"]["iou"] is None and rows["presence"]["iou"] is None
    assert 0.0 <= rows["random"]["iou"] <= 1.0
    assert "iou" in summary["policies"]["random"] and "iou" not in summary["policies"]["oracle"]
    report = (tmp_path / "report.md").read_text()
    iou_table = report.split("## IoU after retraining")[1].split("## Per class")[0]
    assert "| random | 0 | 0 | 1 |" in iou_table and "| oracle |" not in iou_table
    jobs_run.clear()  # widening the retrained set redoes only the newly retrained jobs
    evaluate(
        prepared.path,
        tmp_path,
        policies=policies,
        retrain_epochs=1,
        retrain_policies=("random", "oracle"),
        **kwargs,
    )
    assert [(j.policy, j.retrain) for j in jobs_run] == [("oracle", True)]
    for wrong, message in ((("oracle",), "include it"), (("random", "bald"), "not in --policies")):
        with pytest.raises(ValueError, match=message):
            evaluate(prepared.path, tmp_path, policies=policies, retrain_policies=wrong, **kwargs)


def test_retrain_epochs_help_states_the_default() -> None:
    import argparse

    from misical_gym.segmenter.retrain import DEFAULT_RETRAIN_EPOCHS

    parser = argparse.ArgumentParser()
    evaluate_module.add_evaluate_arguments(parser)
    assert f"fine-tuning epochs ({DEFAULT_RETRAIN_EPOCHS})" in parser.format_help()


def test_retraining_flags_offer_exactly_what_the_fine_tuning_takes() -> None:
    import argparse

    from misical_gym.segmenter.retrain import WEIGHTS_FROM
    from misical_gym.segmenter.training import CLASS_WEIGHTINGS

    # The flags name the choices themselves: importing the fine-tuning would import torch.
    parser = argparse.ArgumentParser()
    evaluate_module.add_evaluate_arguments(parser)
    choices = {action.dest: action.choices for action in parser._actions}
    assert set(choices["retrain_weighting"]) == set(CLASS_WEIGHTINGS)
    assert set(choices["retrain_weights_from"]) == set(WEIGHTS_FROM)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"retrain_learning_rate": 0.0}, "--retrain-learning-rate must be positive, got 0.0"),
        ({"retrain_learning_rate": float("nan")}, "--retrain-learning-rate must be positive"),
        ({"retrain_weighting": "median"}, "--retrain-weighting must be one of sqrt, inverse"),
        ({"retrain_weights_from": "pool"}, "--retrain-weights-from must be one of crops, init"),
        ({"retrain_epochs": -1}, "--retrain-epochs must be non-negative"),
    ],
)
def test_bad_retraining_settings_fail_before_any_work(
    prepared, tmp_path, jobs_run, settings, message
) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(prepared.path, tmp_path, policies=("random",), retrain=True, **settings)
    assert jobs_run == []


def test_retrain_fine_tunes_with_the_given_settings(prepared, monkeypatch) -> None:
    from misical_gym.segmenter import retrain

    seen = []

    def record(model, images, labels, config, **kwargs):
        seen.append(config)

    monkeypatch.setattr(retrain, "train_segmenter", record)
    ids = prepared.split_ids("pool")[:2]
    retrain.retrain_iou(prepared, "sky", ids, epochs=3, learning_rate=2e-4, class_weighting="sqrt")
    retrain.retrain_iou(prepared, "sky", ids, epochs=3)
    assert [(c.epochs, c.learning_rate, c.class_weighting) for c in seen] == [
        (3, 2e-4, "sqrt"),
        (3, 3e-3, "inverse"),
    ]
    with pytest.raises(ValueError, match="weights_from"):  # passed through, not dropped
        retrain.retrain_iou(prepared, "sky", ids, epochs=3, weights_from="pool")


def test_retrain_weights_from_init_are_the_same_whatever_the_picks(prepared, monkeypatch) -> None:
    from misical_gym.segmenter import retrain
    from misical_gym.segmenter.training import class_weights

    seen = []

    def record(model, images, labels, config, *, weight_labels, **kwargs):
        seen.append(class_weights(weight_labels, prepared.num_classes, "sqrt"))

    monkeypatch.setattr(retrain, "train_segmenter", record)
    pool = prepared.split_ids("pool")
    sky = prepared.class_index("sky")
    counts = np.asarray(prepared.counts[pool, sky])
    # Picks with the most sky and picks with the least: far apart in sky pixels.
    rich, poor = pool[np.argsort(counts)[-4:]], pool[np.argsort(counts)[:4]]
    for weights_from in ("crops", "init"):
        for ids in (rich, poor):
            retrain.retrain_confusion(prepared, ids, epochs=1, weights_from=weights_from)
    by_crops, by_init = seen[:2], seen[2:]
    assert by_crops[0][sky] < by_crops[1][sky]  # the crops' weights fall with the sky acquired
    np.testing.assert_array_equal(by_init[0], by_init[1])
    with pytest.raises(ValueError, match="weights_from"):
        retrain.retrain_confusion(prepared, rich, epochs=1, weights_from="pool")


def test_rows_of_before_the_retraining_settings_read_as_their_defaults(prepared, tmp_path) -> None:
    from misical_gym.train.jobs import Job

    job = Job(
        store=str(prepared.path),
        store_fingerprint=prepared.fingerprint,
        target="sky",
        target_id=prepared.class_index("sky"),
        policy="random",
        seed=0,
        budget=4,
        pool_size=8,
        pretrain_steps=0,
        online_steps=0,
        retrain=True,
        retrain_epochs=32,
        cache=str(tmp_path),
        retrain_learning_rate=3e-3,
        retrain_weighting="inverse",
        retrain_weights_from="crops",
    )
    row = {"target": "sky", "iou": 0.5, "retrain_epochs": 32}  # only the epochs were recorded
    assert job.answered_by({"digest": job.digest, "row": row}) == row
    for setting in ({"retrain_weighting": "sqrt"}, {"retrain_weights_from": "init"}):
        other = dataclasses.replace(job, **setting)
        assert other.digest == job.digest  # the fine-tuning is not part of the selection
        assert other.answered_by({"digest": job.digest, "row": row}) is None


def test_retrain_is_deterministic(prepared) -> None:
    from misical_gym.segmenter.retrain import retrain_iou

    ids = prepared.split_ids("pool")[:6]
    first = retrain_iou(prepared, "sky", ids, seed=3, epochs=1)
    assert 0.0 <= first <= 1.0
    assert retrain_iou(prepared, "sky", ids, seed=3, epochs=1) == first


def test_retrain_needs_the_store_images(tiny_store, prepared, tmp_path, capsys) -> None:
    import shutil

    from misical_gym.errors import StoreError

    argv = ["evaluate", "--store", str(tiny_store.path), "--out", str(tmp_path / "a")]
    assert main([*argv, "--targets", "class3", "--retrain"]) == 2
    assert "does not record where they are" in capsys.readouterr().err
    for flag, value in (
        ("--retrain-epochs", "2"),
        ("--retrain-learning-rate", "1e-4"),
        ("--retrain-weighting", "sqrt"),
        ("--retrain-weights-from", "init"),
    ):
        assert main([*argv, flag, value]) == 2
        assert "--retrain-weighting and --retrain-weights-from need --retrain" in (
            capsys.readouterr().err
        )
    assert main([*argv, "--retrain-policies", "random"]) == 2
    assert "--retrain-policies needs --retrain" in capsys.readouterr().err
    moved = tmp_path / "moved"  # a store whose dataset is no longer where it was
    shutil.copytree(prepared.path, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["dataset"]["sources"] = [
        {"kind": "coco10k", "root": str(tmp_path / "gone"), "split": "train"}
    ]
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="its dataset cannot be read"):
        evaluate(moved, tmp_path / "b", targets=["sky"], policies=("random",), retrain=True)
    assert not (tmp_path / "a" / "jobs").exists() and not (tmp_path / "b" / "jobs").exists()


@pytest.mark.parametrize(
    ("mine", "beats", "significant"),
    [
        ([10, 11, 12], 1, 1),  # every seed above every random seed: p = 1/20, the 3-seed floor
        ([2, 9, 30], 1, 0),  # higher mean, overlapping seeds
        ([1, 2, 3], 0, 0),
    ],
)
def test_beats_random_and_significance(mine, beats, significant) -> None:
    from misical_gym.train.statistics import summarize

    rows = [
        {"target": "a", "policy": policy, "seed": seed, "target_pixels": value, "iou": None}
        for policy, values in (("random", [4, 5, 6]), ("p", mine))
        for seed, value in enumerate(values)
    ]
    row = summarize(rows, ("p", "random"), ["a"], (), ("a",))["policies"]["p"]
    assert (row["beats_random"], row["beats_random_significant"]) == (beats, significant)
