"""The default segmenter: the encode/head split, deterministic training, checkpoints, IoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from misical_gym.runtime import cpu_threads, default_threads
from misical_gym.segmenter import (
    SmallUNet,
    TrainConfig,
    class_weights,
    iou_from_confusion,
    load_segmenter,
    save_segmenter,
    segment_iou,
    train_segmenter,
)

torch.set_num_threads(1)


def toy_data(n: int = 12, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Images whose left half is red (class 0) and right half green (class 1), plus a blue bar."""
    rng = np.random.default_rng(0)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    labels = np.zeros((n, size, size), dtype=np.uint8)
    images[:, :, : size // 2, 0] = 200
    images[:, :, size // 2 :, 1] = 200
    labels[:, :, size // 2 :] = 1
    for i in range(n):
        row = rng.integers(2, size - 4)
        images[i, row : row + 2, 2:-2] = (0, 0, 250)
        labels[i, row : row + 2, 2:-2] = 2
    images = np.clip(images + rng.integers(0, 30, images.shape), 0, 255).astype(np.uint8)
    return images, labels


@pytest.mark.parametrize("levels", [2, 3, 5])
@pytest.mark.parametrize("size", [(16, 16), (13, 18)])
def test_encode_head_split_any_size(size, levels) -> None:
    model = SmallUNet(num_classes=4, width=4, levels=levels).eval()
    x = torch.rand(2, 3, *size)
    z = model.encode(x)
    assert z.shape == (2, 4, *size)
    assert torch.equal(model.head(z), model(x))
    assert model.head(z).shape == (2, 4, *size)


def trained(
    images: np.ndarray, labels: np.ndarray, config: TrainConfig, outside_seed: int = 0, **kwargs
) -> tuple[SmallUNet, list[dict[str, float]], torch.Tensor]:
    """A width-8 model trained from fixed initial weights, its history and its flat weights."""
    torch.manual_seed(7)
    model = SmallUNet(num_classes=3, width=8)
    torch.manual_seed(outside_seed)  # the trainer reseeds: outside state must not matter
    history = train_segmenter(model, images, labels, config, device="cpu", progress=False, **kwargs)
    return model, history, torch.cat([p.flatten() for p in model.state_dict().values()])


@pytest.mark.parametrize(("size", "crop", "epochs"), [(16, None, 15), (24, 12, 20)])
def test_training_learns_and_is_deterministic(size: int, crop: int | None, epochs: int) -> None:
    images, labels = toy_data(size=size)
    config = TrainConfig(epochs=epochs, batch_size=4, crop=crop, seed=3)
    model, history, weights = trained(images, labels, config)
    assert torch.equal(weights, trained(images, labels, config, outside_seed=1)[2])
    assert history[-1]["loss"] < history[0]["loss"]
    # Measured on whole images, whatever window the training saw.
    iou = segment_iou(model, images, labels, device="cpu")
    assert iou[0] > 0.8 and iou[1] > 0.8 and iou[2] > 0.3


def test_random_windows_change_what_is_trained() -> None:
    images, labels = toy_data(size=24)
    windows = trained(images, labels, TrainConfig(epochs=2, batch_size=4, crop=12, seed=3))[2]
    whole = trained(images, labels, TrainConfig(epochs=2, batch_size=4, seed=3))[2]
    assert not torch.equal(windows, whole)


@pytest.mark.parametrize(("crop", "match"), [(4, "at least 8"), (17, "larger than the 16x16")])
def test_a_bad_training_window_is_refused(crop: int, match: str) -> None:
    images, labels = toy_data()
    with pytest.raises(ValueError, match=match):
        config = TrainConfig(epochs=1, crop=crop)
        train_segmenter(SmallUNet(3, 4), images, labels, config, device="cpu", progress=False)


def test_validation_every_k_epochs_and_after_the_last_leaves_training_unchanged() -> None:
    images, labels = toy_data()
    config = TrainConfig(epochs=5, batch_size=4, seed=3)
    val = {"val_images": images[:3], "val_labels": labels[:3]}
    _, every, weights_every = trained(images, labels, config, val_every=1, **val)
    _, second, weights_second = trained(images, labels, config, val_every=2, **val)
    assert all("val_miou" in record for record in every)
    assert ["val_miou" in record for record in second] == [False, True, False, True, True]
    assert torch.equal(weights_every, weights_second)
    assert [r["loss"] for r in every] == [r["loss"] for r in second]


def test_fine_tuning_on_mostly_ignored_labels() -> None:
    images, labels = toy_data()
    partial = np.full_like(labels, 255)
    partial[:, :8, :8] = labels[:, :8, :8]
    model = SmallUNet(num_classes=3, width=4)
    history = train_segmenter(
        model, images, partial, TrainConfig(epochs=2, batch_size=4), device="cpu", progress=False
    )
    assert np.isfinite(history[-1]["loss"])


@pytest.mark.parametrize("levels", [3, 4])
def test_checkpoint_round_trip(tmp_path, levels) -> None:
    model = SmallUNet(num_classes=3, width=4, dropout=0.2, levels=levels).eval()
    save_segmenter(model, tmp_path / "seg.pt")
    loaded = load_segmenter(tmp_path / "seg.pt")
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(model(x), loaded(x))
    expected = {"num_classes": 3, "width": 4, "dropout": 0.2}
    assert loaded.config == (expected if levels == 3 else {**expected, "levels": levels})


def test_the_default_network_keeps_its_layout() -> None:
    """Three levels build the layers in the order and with the names they always had, so that a
    seed draws the same initial weights and older checkpoints load."""
    names = [name for name, _ in SmallUNet(3, width=4).named_children()]
    assert names == ["enc1", "enc2", "enc3", "up2", "dec2", "up1", "dec1", "dropout", "classifier"]
    deeper = SmallUNet(3, width=4, levels=5)
    channels = [deeper.get_submodule(f"enc{i}")[0].out_channels for i in range(1, 6)]
    assert channels == [4, 8, 16, 32, 32]  # doubling stops at 8x the first level


def test_fewer_than_two_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="levels must be at least 2"):
        SmallUNet(3, levels=1)


def test_class_weights() -> None:
    labels = np.array([[0] * 90 + [1] * 9 + [2] * 1 + [255] * 10])
    inverse = class_weights(labels, 4, "inverse", cap=50)
    sqrt = class_weights(labels, 4, "sqrt")
    assert inverse[2] > inverse[1] > inverse[0]
    assert inverse[2] / inverse[0] > sqrt[2] / sqrt[0] > 1
    assert inverse[3] == inverse[:3].max()  # absent classes get the largest weight
    assert np.all(class_weights(labels, 4, "none") == 1)
    with pytest.raises(ValueError, match="class_weighting"):
        TrainConfig(class_weighting="log")


def test_iou_from_confusion() -> None:
    confusion = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    iou = iou_from_confusion(confusion)
    assert iou[0] == pytest.approx(3 / 4) and iou[1] == pytest.approx(2 / 3)
    assert np.isnan(iou[2])


def test_cpu_threads_restores_the_callers_setting() -> None:
    before = torch.get_num_threads()
    with cpu_threads(None) as threads:
        assert threads == default_threads() >= 1 and torch.get_num_threads() == threads
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"), cpu_threads(0):
        pass
