"""``misical evaluate``: end to end, resume, executors, and reports that agree with results."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

import misical_gym.train.evaluate as evaluate_module
from misical_gym.cli import main
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


def test_resume_redoes_only_missing_jobs(evaluated, tiny_store, monkeypatch) -> None:
    out, summary = evaluated
    killed = out / "jobs" / "class3__presence__1.json"
    killed.unlink()  # as if the run was killed before this job finished
    calls = []
    real = evaluate_module.run_job

    def counting(job):
        calls.append((job["target"], job["policy"], job["seed"]))
        return real(job)

    monkeypatch.setattr(evaluate_module, "run_job", counting)
    again = evaluate(tiny_store.path, out, policies=("random", "presence", "bald", "oracle"), **KW)
    assert calls == [("class3", "presence", 1)]
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
    (out / "jobs" / "class3__ddqn__0.json").unlink()
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
