"""Item 12: ``--out .``, ``--mc-stride`` and ``--seed -1`` get messages that say what is wrong."""

from __future__ import annotations

from misical_gym.cli import main
from misical_gym.store import FeatureStore

TINY = ["--images", "40", "--epochs", "1", "--mc-samples", "2", "--init-fraction", "0.3"]


def test_item12_out_dot_names_the_folder(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "synthetic", "--out", ".", *TINY]) == 2
    err = capsys.readouterr().err
    assert "empty name" not in err and str(tmp_path) in err and "no feature store" in err
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["prepare", "synthetic", "--out", ".", *TINY]) == 0
    assert FeatureStore.open(here).num_patches == 40 * 16


def test_item12_mc_stride_too_large_is_refused_before_training(
    tmp_path, capsys, no_training
) -> None:
    argv = ["prepare", "synthetic", "--out", str(tmp_path / "s"), "--mc-stride", "1000"]
    assert main([*argv, *TINY]) == 2
    assert "--mc-stride 1000 pools" in capsys.readouterr().err
    assert no_training == []


def test_item12_negative_seed_is_named(tiny_store, tmp_path, capsys) -> None:
    argv = ["train", "--agent", "random", "--env", "MiSiCAL-Store", "--steps", "4", "--seed", "-1"]
    argv += ["--env-kwargs", f"root={tiny_store.path}", "--logdir", str(tmp_path / "runs")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--seed must be a non-negative integer" in err and "hyperparameters" not in err
    assert main(["prepare", "synthetic", "--out", str(tmp_path / "s"), "--seed", "-1"]) == 2
    assert "--seed must be non-negative" in capsys.readouterr().err
