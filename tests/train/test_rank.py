"""``misical select --mode rank`` and ``misical evaluate --select-mode``: the best B of the pool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from misical_gym.annotations.apply import read_picks
from misical_gym.cli import main
from misical_gym.envs.core import ObservationBuilder
from misical_gym.store import FeatureStore
from misical_gym.testing import write_random_store
from misical_gym.train.jobs import Job
from misical_gym.train.rank import best_patches, rank_scores
from misical_gym.train.select import select_patches


def _rank(store: FeatureStore, policy: str = "presence", budget: int = 30, **kw) -> list[int]:
    kw.setdefault("include_labelled", True)
    selection = select_patches(store.path, policy, "class3", budget, mode="rank", **kw)
    assert selection["mode"] == "rank"
    return [p["patch_id"] for p in selection["picks"]]


def _select_argv(store: FeatureStore, out: Path, *extra: str) -> list[str]:
    return [
        "select",
        "--store",
        str(store.path),
        "--policy",
        "presence",
        "--target",
        "class3",
        "--budget",
        "20",
        "--out",
        str(out),
        "--mode",
        "rank",
        *extra,
    ]


@pytest.mark.parametrize("policy", ["presence", "bald", "oracle"])
def test_rank_keeps_the_best_scores_of_the_whole_pool(tiny_store, policy) -> None:
    ids = _rank(tiny_store, policy)
    pool = tiny_store.split_ids("pool")
    column = {
        "presence": np.asarray(tiny_store.presence)[pool, 3],
        "bald": np.asarray(tiny_store.features)[pool, 0],
        "oracle": np.asarray(tiny_store.counts)[pool, 3],
    }[policy]
    # Exactly the 30 best scores (ties may go either way, so compare the scores).
    np.testing.assert_allclose(
        np.sort(column)[::-1][:30],
        np.sort(column[np.searchsorted(pool, ids)])[::-1],
        rtol=1e-6,
    )
    assert len(set(ids)) == 30


def test_ranked_scores_are_sorted_and_no_worse_than_an_episodes(tiny_store) -> None:
    ranked = select_patches(
        tiny_store.path, "presence", "class3", 30, mode="rank", include_labelled=True
    )
    played = select_patches(tiny_store.path, "presence", "class3", 30)
    assert played["mode"] == "episode"
    assert [p["score"] for p in ranked["picks"]] == sorted(
        (p["score"] for p in ranked["picks"]), reverse=True
    )
    # The 30 best of the pool add up to at least any 30 distinct pool patches' scores.
    assert sum(p["score"] for p in ranked["picks"]) >= sum(p["score"] for p in played["picks"])


@pytest.mark.parametrize("limit", [1, 2])
def test_max_per_image_caps_each_image(tiny_store, limit) -> None:
    ids = _rank(tiny_store, max_per_image=limit)
    images = np.asarray(tiny_store.patches)[ids, 0]
    pool = tiny_store.split_ids("pool")
    pool_images = np.unique(np.asarray(tiny_store.patches)[pool, 0]).size
    assert len(ids) == min(30, limit * pool_images) and np.bincount(images).max() == limit
    # An image gives its best patches: none left out beats a kept one of its image.
    presence = np.asarray(tiny_store.presence)[:, 3]
    for image in set(images.tolist()):
        of_image = pool[np.asarray(tiny_store.patches)[pool, 0] == image]
        kept = np.sort(presence[ids][images == image])[::-1]
        np.testing.assert_allclose(kept, np.sort(presence[of_image])[::-1][: kept.size])


def test_rank_skips_labelled_patches_unless_asked(tiny_store, monkeypatch) -> None:
    pool = tiny_store.split_ids("pool")
    labelled = np.zeros(tiny_store.num_patches, dtype=bool)
    labelled[pool[::2]] = True
    monkeypatch.setattr(FeatureStore, "labelled", property(lambda self: labelled))
    unlabelled = set(pool[1::2].tolist())
    assert set(_rank(tiny_store, include_labelled=False)) <= unlabelled
    assert not set(_rank(tiny_store, include_labelled=True)) <= unlabelled


def test_a_pool_of_labelled_patches_only_is_a_clear_error(tiny_store, tmp_path, capsys) -> None:
    assert main(_select_argv(tiny_store, tmp_path / "p.json")) == 2
    assert "every pool patch is labelled; pass --include-labelled" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_exclude_leaves_out_earlier_picks(tiny_store, tmp_path) -> None:
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    assert main(_select_argv(tiny_store, first, "--include-labelled")) == 0
    argv = _select_argv(tiny_store, second, "--include-labelled", "--exclude", str(first))
    assert main(argv) == 0
    a = [p["patch_id"] for p in json.loads(first.read_text())["picks"]]
    b = [p["patch_id"] for p in json.loads(second.read_text())["picks"]]
    assert len(b) == 20 and not set(a) & set(b)
    # Without the exclusion the second selection would repeat the first.
    assert _rank(tiny_store, budget=20) == a
    np.testing.assert_array_equal(read_picks(first, tiny_store), a)


@pytest.mark.parametrize("change", ["store_id", "store_fingerprint", "patch_id"])
def test_exclude_refuses_a_picks_file_of_another_store(tiny_store, tmp_path, capsys, change):
    picks = tmp_path / "picks.json"
    assert main(_select_argv(tiny_store, picks, "--include-labelled")) == 0
    data = json.loads(picks.read_text())
    if change == "patch_id":
        data["picks"][0]["patch_id"] = tiny_store.num_patches
    else:
        data[change] = "other"
    picks.write_text(json.dumps(data))
    out = tmp_path / "next.json"
    assert main(_select_argv(tiny_store, out, "--include-labelled", "--exclude", str(picks))) == 2
    err = capsys.readouterr().err
    assert "misical: error:" in err and str(picks) in err
    assert ("is not a patch of store" if change == "patch_id" else "was made for store") in err
    assert not out.exists()


@pytest.mark.parametrize("option", [["--max-per-image", "1"], ["--include-labelled"]])
def test_rank_options_need_rank_mode(tiny_store, tmp_path, capsys, option) -> None:
    argv = _select_argv(tiny_store, tmp_path / "p.json", *option)
    argv[argv.index("rank")] = "episode"
    assert main(argv) == 2
    assert "apply to --mode rank" in capsys.readouterr().err


class _PooledPolicy:
    """A pooled-context scorer: each row's value minus its set's mean. Records its calls."""

    def __init__(self, k: int, f: int) -> None:
        self.candidate_shape = (k, f)
        self.tie_break_rng = None
        self.calls: list[tuple[int, ...]] = []

    def scores(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(rows.shape)
        valid = (rows != 0).any(-1)
        value = rows[..., 3]
        mean = (value * valid).sum(1, keepdims=True) / valid.sum(1, keepdims=True)
        return value - mean


def test_pooled_context_policies_score_seeded_sets_of_pool_size(tiny_store) -> None:
    builder = ObservationBuilder(tiny_store, target_onehot=False)
    pool = tiny_store.split_ids("pool")
    policy = _PooledPolicy(8, builder.num_features)
    a = rank_scores(policy, builder, pool, 3, pool_size=8, seed=0)
    assert all(shape[1:] == (8, builder.num_features) for shape in policy.calls)
    assert sum(shape[0] for shape in policy.calls) == -(-pool.size // 8)  # each patch once
    np.testing.assert_array_equal(a, rank_scores(policy, builder, pool, 3, pool_size=8, seed=0))
    b = rank_scores(policy, builder, pool, 3, pool_size=8, seed=1)
    assert not np.allclose(a, b)  # other sets, other contexts


def test_ties_break_in_a_seeded_random_order(tiny_store) -> None:
    ids = np.arange(100)
    scores = np.zeros(100)
    a = best_patches(tiny_store, ids, scores, 10, seed=0)
    np.testing.assert_array_equal(a, best_patches(tiny_store, ids, scores, 10, seed=0))
    assert not np.array_equal(a, best_patches(tiny_store, ids, scores, 10, seed=1))


def test_a_trained_ddqn_ranks_deterministically(tiny_store, saved_ddqn_run) -> None:
    run_dir = saved_ddqn_run
    a = _rank(tiny_store, str(run_dir), pool_size=8, device="cpu")
    assert a == _rank(tiny_store, str(run_dir), pool_size=8, device="cpu")
    assert a != _rank(tiny_store, str(run_dir), pool_size=8, device="cpu", seed=1)


def _job(**kw) -> Job:
    base = dict(
        store="/s",
        store_fingerprint="abc",
        target="class3",
        target_id=3,
        policy="presence",
        seed=1,
        budget=10,
        pool_size=8,
        pretrain_steps=0,
        online_steps=0,
        retrain=False,
        retrain_epochs=None,
        cache="/c",
    )
    return Job(**(base | kw))


def test_the_select_mode_enters_the_job_digest_and_episode_keeps_the_old_one() -> None:
    # The digest this job had before the select mode existed: every job file stays valid.
    assert _job().digest == _job(select_mode="episode").digest == "2825b8aef6b4d619"
    assert _job(select_mode="rank").digest != _job().digest


def test_the_goal_network_enters_only_the_goal_policys_training() -> None:
    network = Job.encode({"goal_policy_kwargs": {"phi_arch": [8]}})
    one, goal = (
        _job(policy="ddqn", hyperparams=network),
        _job(policy="ddqn-goal", hyperparams=network),
    )
    assert goal.training()["hyperparams"]["goal_policy_kwargs"] == {"phi_arch": [8]}
    assert "goal_policy_kwargs" not in one.training()["hyperparams"]
    assert one.training()["hyperparams"]["policy_kwargs"] == {
        "phi_arch": [64, 64],
        "rho_arch": [64],
    }


def test_evaluate_compares_rank_and_episode(tmp_path) -> None:
    store = write_random_store(tmp_path / "s", num_images=30, seed=3)
    rows = {}
    for mode in ("episode", "rank"):
        out = tmp_path / mode
        argv = ["evaluate", "--store", str(store.path), "--targets", "class2", "--policies"]
        argv += ["random,presence,oracle", "--budget", "12", "--seeds", "1", "--out", str(out)]
        assert main([*argv, "--select-mode", mode]) == 0
        rows[mode] = {r["policy"]: r for r in json.loads((out / "results.json").read_text())}
    # Ranked, the oracle takes the 12 patches with the most target pixels of the whole pool.
    pool = store.split_ids("pool")
    best = np.sort(np.asarray(store.counts)[pool, 2])[::-1][:12].sum()
    assert rows["rank"]["oracle"]["target_pixels"] == best
    assert rows["rank"]["oracle"]["target_pixels"] >= rows["episode"]["oracle"]["target_pixels"]
    # Ranked presence-greedy takes the pool's 12 highest presences, in that order.
    top = pool[np.argsort(-np.asarray(store.presence)[pool, 2], kind="stable")[:12]]
    curve = np.cumsum(np.asarray(store.counts)[top, 2]).tolist()
    job = json.loads(next((tmp_path / "rank" / "jobs").glob("*__presence__0.json")).read_text())
    assert job["row"]["curve"] == curve
