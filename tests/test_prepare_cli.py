"""``misical prepare`` / ``misical inspect`` end to end on a tiny synthetic world."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest

from misical_gym.cli import main
from misical_gym.data import store_image
from misical_gym.data.synthetic import SyntheticScenes
from misical_gym.errors import StoreError
from misical_gym.prepare import PrepareConfig, prepare, prepare_synthetic
from misical_gym.segmenter import SmallUNet
from misical_gym.store import SPLITS, FeatureStore
from misical_gym.testing import write_random_store

TINY = ["--images", "40", "--epochs", "1", "--mc-samples", "2", "--init-fraction", "0.3"]


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> FeatureStore:
    out = tmp_path_factory.mktemp("prep") / "synthetic"
    assert main(["prepare", "synthetic", "--out", str(out), *TINY]) == 0
    return FeatureStore.open(out)


def test_prepare_synthetic_writes_a_complete_store(tiny_synthetic) -> None:
    store = tiny_synthetic
    assert store.num_patches == 40 * 16
    assert store.rare_classes == (17, 18, 19)
    assert store.segmenter_checkpoint is not None and store.segmenter_checkpoint.is_file()
    assert len(store.manifest["segmenter"]["test_iou"]) == store.num_classes
    features = np.asarray(store.features)
    assert np.isfinite(features).all() and (features >= 0).all()
    presence = np.asarray(store.presence)
    np.testing.assert_allclose(presence.sum(1), 1.0, atol=1e-4)
    counts = np.asarray(store.counts)
    np.testing.assert_array_equal(counts.sum(1), store.areas)  # synthetic labels cover every pixel
    assert {s for s in ("init", "pool", "test") if store.split_ids(s).size} == {
        "init",
        "pool",
        "test",
    }


def test_training_windows_are_recorded_and_whole_images_leave_no_trace(
    tiny_synthetic, tmp_path
) -> None:
    config = tiny_synthetic.manifest["config"]
    assert "train_crop" not in config["prepare"] and "crop" not in config["segmenter_training"]
    out = tmp_path / "cropped"
    assert main(["prepare", "synthetic", "--out", str(out), *TINY, "--train-crop", "32"]) == 0
    config = FeatureStore.open(out).manifest["config"]
    assert config["prepare"]["train_crop"] == 32 and config["segmenter_training"]["crop"] == 32


def test_store_reaches_its_images_again(tiny_synthetic) -> None:
    from misical_gym.data import open_dataset

    spec = tiny_synthetic.dataset["sources"][0]
    image, label = open_dataset(spec)[3]
    assert tuple(tiny_synthetic.image_sizes[3]) == label.shape


def test_prepared_store_runs_the_env(tiny_synthetic) -> None:
    env = gym.make("MiSiCAL-Store", root=str(tiny_synthetic.path), budget=4, pool_size=8)
    obs, info = env.reset(seed=0)
    assert tiny_synthetic.class_names[info["target_class"]] == "skis"
    assert env.observation_space.contains(obs)


def test_inspect_prints_a_json_summary(tiny_synthetic, capsys) -> None:
    assert main(["inspect", str(tiny_synthetic.path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["patches"] == 640 and summary["rare_classes"] == ["skis", "fork", "surfboard"]
    assert set(summary["class_patch_frequency"]) == {"init", "pool", "test"}
    assert set(summary["segmenter_test_iou"]) == set(tiny_synthetic.class_names)


def test_inspect_path_prints_the_default_store(misical_home, capsys) -> None:
    write_random_store(misical_home / "synthetic", num_images=4)
    assert main(["inspect", "--path", "synthetic"]) == 0
    assert capsys.readouterr().out == f"{misical_home / 'synthetic'}\n"


@pytest.mark.parametrize(
    ("name", "message"), [("coco10k", "no prepared store"), ("../x", "store name")]
)
def test_inspect_path_errors(misical_home, capsys, name, message) -> None:
    assert main(["inspect", "--path", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("misical: error:") and message in err


def test_inspect_into_a_closed_pipe_exits_quietly(tiny_synthetic) -> None:
    # `misical inspect STORE | head`: the reader is gone before the summary is written.
    read, write = os.pipe()
    os.close(read)
    result = subprocess.run(
        [sys.executable, "-m", "misical_gym", "inspect", str(tiny_synthetic.path)],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    os.close(write)
    assert result.returncode == 128 + signal.SIGPIPE
    assert result.stderr == ""


def test_prepare_resumes_after_training_with_identical_features(tmp_path, monkeypatch) -> None:
    config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3)
    first = prepare_synthetic(tmp_path / "s", images=24, config=config, progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("training ran again although its checkpoint was there")

    import misical_gym.segmenter.training

    monkeypatch.setattr(misical_gym.segmenter, "train_segmenter", no_training)
    monkeypatch.setattr(misical_gym.segmenter.training, "train_segmenter", no_training)
    # Feature settings are not training settings: the cached segmenter still serves.
    again = prepare_synthetic(
        tmp_path / "s", images=24, config=config, overwrite=True, progress=False, batch_size=5
    )
    np.testing.assert_array_equal(np.asarray(first.counts), np.asarray(again.counts))
    assert not np.array_equal(first.features, again.features)  # other batches, other masks
    again = prepare_synthetic(
        tmp_path / "s", images=24, config=config, overwrite=True, progress=False
    )
    # Seeded dropout masks: resuming gives the very same features as training afresh.
    np.testing.assert_array_equal(np.asarray(first.features), np.asarray(again.features))


def test_failed_prepare_leaves_no_store_and_no_temporary_arrays(tmp_path, monkeypatch) -> None:
    import misical_gym.features

    real, calls = misical_gym.features.mc_patch_features, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory, say")
        return real(*args, **kwargs)

    monkeypatch.setattr(misical_gym.features, "mc_patch_features", failing)
    config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3, batch_size=8)
    with pytest.raises(RuntimeError, match="out of memory"):
        prepare_synthetic(tmp_path / "s", images=24, config=config, progress=False)
    assert len(calls) == 2
    with pytest.raises(StoreError):
        FeatureStore.open(tmp_path / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.build"]
    assert sorted(p.name for p in (tmp_path / "s.build").iterdir()) == [
        "segmenter.done.json",
        "segmenter.pt",
        "tb",
    ]


def test_prepare_killed_while_writing_leaves_no_store_then_resumes(tmp_path) -> None:
    """SIGKILL ``prepare`` in the middle of writing the store; a rerun finishes it."""
    out = tmp_path / "s"
    script = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        import misical_gym.store as store_module
        from misical_gym.prepare import PrepareConfig, prepare_synthetic
        real_save = np.save
        def dying_save(file, array, *args, **kwargs):
            real_save(file, array, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)  # after the first array, before the manifest
        store_module.np.save = dying_save
        config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3, threads=1)
        prepare_synthetic({str(out)!r}, images=16, config=config, progress=False)
        """
    )
    result = subprocess.run([sys.executable, "-c", script])
    assert result.returncode == -signal.SIGKILL
    with pytest.raises(StoreError):
        FeatureStore.open(out)
    config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3)
    store = prepare_synthetic(out, images=16, config=config, progress=False)
    assert store.num_patches == 16 * 16


def test_prepare_takes_a_train_and_a_test_dataset(tmp_path) -> None:
    train, test = SyntheticScenes(20, seed=1), SyntheticScenes(6, seed=2)
    store = prepare(
        [train, test], tmp_path / "s", epochs=1, mc_samples=2, grid="2x2", progress=False
    )
    assert store.grid.rows == store.grid.cols == 2
    codes = np.asarray(store.patches[:, 3]).reshape(26, 4)[:, 0]
    assert (codes[20:] == SPLITS.index("test")).all()
    assert (codes[:20] == SPLITS.index("init")).sum() == 2 and (codes[:20] == 1).sum() == 18
    assert store.dataset["sources"] == [train.spec, test.spec]
    image, label = store_image(store, 25)  # the last image comes from the test dataset
    np.testing.assert_array_equal(image, test[5][0])
    assert store.manifest["config"]["prepare"]["mc_samples"] == 2
    with pytest.raises(TypeError, match="unknown prepare setting"):
        prepare(train, tmp_path / "t", mc_sample=2)


def test_existing_store_is_not_overwritten_silently(tiny_synthetic, capsys) -> None:
    assert main(["prepare", "synthetic", "--out", str(tiny_synthetic.path), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_extra_uncertainty_columns_leave_the_default_ones_as_they_were(tmp_path) -> None:
    config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3)
    default = prepare_synthetic(tmp_path / "s", images=24, config=config, progress=False)
    assert default.manifest["schema_version"] == 2
    assert "uncertainty" not in default.manifest["config"]["prepare"]
    extra = ("prob_std", "margin", "variation_ratio", "least_confidence")
    more = prepare_synthetic(
        tmp_path / "m", images=24, config=config.replace(uncertainty=extra), progress=False
    )
    layout = more.layout
    assert more.manifest["schema_version"] == 3
    # Any order in, column order out.
    assert layout.uncertainty == (
        "bald",
        "entropy",
        "margin",
        "least_confidence",
        "variation_ratio",
        "prob_std",
    )
    assert more.feature_names[:5] == (*default.feature_names[:3], "margin_mean", "margin_min")
    g = layout.num_global
    # The same seeded dropout masks: every default column is bit-identical.
    np.testing.assert_array_equal(np.asarray(more.features)[:, :3], default.features[:, :3])
    np.testing.assert_array_equal(np.asarray(more.features)[:, g:], default.features[:, 3:])
    assert np.ptp(np.asarray(more.features)[:, 3:g], axis=0).min() > 0  # every new column varies
    env = gym.make("MiSiCAL-Store", root=str(more.path), pool_size=4)
    assert env.unwrapped.feature_names[:g] == layout.global_features
    assert env.observation_space.contains(env.reset(seed=0)[0])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prepare", "synthetic", "--grid", "4by4"], "ROWSxCOLS"),
        (["prepare", "synthetic", "--mc-samples", "0"], "mc-samples"),
        (["prepare", "synthetic", "--init-fraction", "1.5"], "init_fraction"),
        (["prepare", "synthetic", "--threads", "0"], "threads"),
        (["prepare", "synthetic", "--train-crop", "4"], "--train-crop must be at least 8"),
        (["prepare", "synthetic", "--levels", "1"], "--levels must be at least 2"),
        (["prepare", "synthetic", "--train-batch-size", "0"], "--train-batch-size must be at"),
        (["prepare", "synthetic", "--levels", "9"], "--levels must be at least 2 and at most 8"),
        (["prepare", "synthetic", "--uncertainty", "bald,mutual"], "unknown uncertainty metric"),
        (["prepare", "coco10k", "--root", "/nonexistent/cocostuff"], "/nonexistent/cocostuff"),
        (["inspect", "/nonexistent/store"], "misical prepare"),
    ],
)
def test_bad_input_is_a_clear_error(argv, message, capsys, tmp_path) -> None:
    argv = [*argv, "--out", str(tmp_path / "x")] if argv[0] == "prepare" else argv
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("misical: error:") and message in err
    assert "Traceback" not in err


def test_cli_import_is_light() -> None:
    code = "import sys, misical_gym.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rgb_array_outlines_the_chosen_patch(tiny_synthetic) -> None:
    env = gym.make("MiSiCAL-Store", root=str(tiny_synthetic.path), render_mode="rgb_array")
    env.reset(seed=0)
    _, _, _, _, info = env.step(0)
    frame = env.render()
    image = store_image(tiny_synthetic, int(tiny_synthetic.patches[info["patch_id"], 0]))[0]
    assert frame.shape == image.shape and frame.dtype == np.uint8
    y0, x0, y1, x1 = tiny_synthetic.boxes([info["patch_id"]])[0]
    assert (frame[y0, x0:x1] == [255, 0, 0]).all() and (frame[y1 - 1, x0:x1] == [255, 0, 0]).all()
    inside = (slice(y0 + 1, y1 - 1), slice(x0 + 1, x1 - 1))
    np.testing.assert_array_equal(frame[inside], image[inside])


def test_vector_rgb_array_gives_the_single_envs_frames(tiny_synthetic) -> None:
    kwargs = {"root": str(tiny_synthetic.path), "render_mode": "rgb_array"}
    vec = gym.make_vec(
        "MiSiCAL-Store", num_envs=2, vectorization_mode="vector_entry_point", **kwargs
    )
    single = gym.make("MiSiCAL-Store", **kwargs)
    vec.reset(seed=0)
    single.reset(seed=0)
    vec.step(np.array([3, 1]))
    single.step(3)
    frames = vec.render()
    assert len(frames) == 2
    np.testing.assert_array_equal(frames[0], single.render())


def test_synthetic_id_prepares_its_store_on_first_use(misical_home, monkeypatch, capfd) -> None:
    import misical_gym.prepare

    real = misical_gym.prepare.prepare_synthetic

    def tiny(out=None, **kwargs):
        config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3)
        return real(out, images=24, config=config)

    monkeypatch.setattr(misical_gym.prepare, "prepare_synthetic", tiny)
    env = gym.make("MiSiCAL-Synthetic", budget=4, pool_size=4)
    env.reset(seed=0)
    assert (misical_home / "synthetic" / "manifest.json").is_file()
    err = capfd.readouterr().err
    assert "preparing the synthetic feature store" in err and "features" in err
    gym.make("MiSiCAL-Synthetic")  # the second time, it is simply opened


class Custom(SmallUNet):
    """A user module with the encode/head split (here a narrower U-Net)."""


def test_a_user_segmenter_can_be_plugged_in(tmp_path) -> None:
    from misical_gym.segmenter import load_segmenter

    custom = Custom(num_classes=20, width=4)
    config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3)
    store = prepare_synthetic(tmp_path / "s", images=16, config=config, model=custom)
    loaded = load_segmenter(store.segmenter_checkpoint)
    assert type(loaded).__qualname__.endswith("Custom") and loaded.config["width"] == 4


def test_the_segmenters_levels_reach_its_checkpoint_and_manifest(tmp_path) -> None:
    from misical_gym.segmenter import load_segmenter
    from misical_gym.segmenter.model import DEFAULT_LEVELS, MAX_LEVELS

    assert main(["prepare", "synthetic", "--out", str(tmp_path / "s"), *TINY, "--levels", "4"]) == 0
    store = FeatureStore.open(tmp_path / "s")
    assert load_segmenter(store.segmenter_checkpoint).levels == 4
    assert store.manifest["config"]["prepare"]["levels"] == 4
    assert "levels" not in PrepareConfig().to_dict()  # a default manifest is as it always was
    assert PrepareConfig().levels == DEFAULT_LEVELS  # and the default is the segmenter's own
    with pytest.raises(ValueError, match=f"at most {MAX_LEVELS},"):  # and so is the bound
        PrepareConfig(levels=MAX_LEVELS + 1)
    PrepareConfig(levels=MAX_LEVELS)


def test_the_training_batch_reaches_the_segmenters_training_and_manifest(tmp_path) -> None:
    from misical_gym.segmenter import TrainConfig

    argv = ["prepare", "synthetic", "--out", str(tmp_path / "s"), *TINY]
    assert main([*argv, "--train-batch-size", "5"]) == 0
    config = FeatureStore.open(tmp_path / "s").manifest["config"]
    assert config["prepare"]["train_batch_size"] == 5
    assert config["segmenter_training"]["batch_size"] == 5
    assert "train_batch_size" not in PrepareConfig().to_dict()  # default manifests unchanged
    assert PrepareConfig().train_batch_size == TrainConfig().batch_size
