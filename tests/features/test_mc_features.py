"""MC-dropout features against a direct NumPy computation from the same T samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from misical_gym.data.patches import PatchGrid
from misical_gym.features import (
    EXTRA_METRICS,
    enable_mc_dropout,
    mc_patch_features,
    mc_pixel_maps,
    mc_pixel_statistics,
    patch_class_counts,
)
from misical_gym.layout import UNCERTAINTY_COLUMNS, FeatureLayout
from misical_gym.segmenter import SmallUNet

torch.set_num_threads(1)


def numpy_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis)


def numpy_binary_entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None)) + (1 - p) * np.log(np.clip(1 - p, 1e-12, None)))


@pytest.fixture()
def model_and_images():
    torch.manual_seed(0)
    model = SmallUNet(num_classes=5, width=4, dropout=0.5)
    # Non-trivial BatchNorm statistics, so eval vs train mode would differ.
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 12, 16))
    x = torch.rand(2, 3, 12, 16)
    return model, x


def stored_samples(model, x, samples: int, seed: int) -> np.ndarray:
    """The T head samples themselves, drawn with the same RNG sequence as the streaming code."""
    torch.manual_seed(seed)
    enable_mc_dropout(model)
    with torch.no_grad():
        z = model.encode(x)
        probs = [torch.softmax(model.head(z), 1).numpy() for _ in range(samples)]
    return np.stack(probs)  # [T, B, C, H, W]


def test_bald_and_class_bald_match_numpy(model_and_images) -> None:
    model, x = model_and_images
    samples = 7
    p = stored_samples(model, x, samples, seed=3)
    torch.manual_seed(3)
    mean_p, bald, class_bald = mc_pixel_statistics(model, x, samples)
    mean = p.mean(0)
    expected_bald = numpy_entropy(mean, axis=1) - numpy_entropy(p, axis=2).mean(0)
    expected_class_bald = numpy_binary_entropy(mean) - numpy_binary_entropy(p).mean(0)
    np.testing.assert_allclose(mean_p.numpy(), mean, atol=1e-6)
    np.testing.assert_allclose(bald.numpy(), np.clip(expected_bald, 0, None), atol=1e-5)
    np.testing.assert_allclose(class_bald.numpy(), np.clip(expected_class_bald, 0, None), atol=1e-5)
    assert bald.max() > 1e-5  # dropout really sampled: the samples disagree
    assert (class_bald >= 0).all()


def test_patch_features_pool_every_pixel_once(model_and_images) -> None:
    model, x = model_and_images
    grid = PatchGrid(3, 4)  # 12x16 pixels: 4x4 patches
    torch.manual_seed(1)
    mean_p, bald, class_bald = mc_pixel_statistics(model, x, 5)
    torch.manual_seed(1)
    feats = mc_patch_features(model, x, grid, 5)
    c = 5
    assert feats.shape == (2, 12, 3 + 2 * c)
    for b in range(2):
        areas = grid.areas(12, 16)[:, None]
        sums = grid.pool_sum(np.moveaxis(mean_p[b].numpy(), 0, -1))
        np.testing.assert_allclose(feats[b, :, 3 : 3 + c], sums / areas, atol=1e-6)
        np.testing.assert_allclose(
            (feats[b, :, 0] * areas[:, 0]).sum(), bald[b].sum().item(), rtol=1e-5
        )
        ys, xs = grid.edges(12, 16)
        np.testing.assert_allclose(feats[b, 0, 1], bald[b, : ys[1], : xs[1]].max().item())
    assert feats[..., 3 : 3 + c].sum(-1) == pytest.approx(1.0, abs=1e-5)


def test_mc_mode_freezes_batchnorm_and_samples_dropout(model_and_images) -> None:
    model, x = model_and_images
    running = [
        m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    mc_pixel_statistics(model, x, 3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert not module.training
        if isinstance(module, torch.nn.Dropout):
            assert module.training
    after = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for before, now in zip(running, after, strict=True):
        assert torch.equal(before, now)
    torch.manual_seed(0)
    a = mc_pixel_statistics(model, x, 3)[0]
    b = mc_pixel_statistics(model, x, 3)[0]
    assert not torch.equal(a, b)  # different dropout masks


def test_patch_class_counts_cover_every_labelled_pixel_once() -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (13, 17)).astype(np.uint8)
    label[0, :5] = 255
    grid = PatchGrid(3, 4)
    counts = patch_class_counts(label, grid, 4)
    assert counts.shape == (12, 4)
    np.testing.assert_array_equal(counts.sum(0), np.bincount(label[label != 255], minlength=4))
    boxes = grid.boxes(13, 17)
    for p, (y0, x0, y1, x1) in enumerate(boxes):
        window = label[y0:y1, x0:x1]
        np.testing.assert_array_equal(counts[p], np.bincount(window[window != 255], minlength=4))
    with pytest.raises(ValueError, match="< 4"):
        patch_class_counts(np.full((4, 4), 7, np.uint8), PatchGrid(2, 2), 4)


def test_stride_runs_the_head_on_pooled_features(model_and_images) -> None:
    model, x = model_and_images
    torch.manual_seed(2)
    mean_p, bald, class_bald = mc_pixel_statistics(model, x, 4, stride=2)
    assert mean_p.shape == (2, 5, 6, 8) and bald.shape == (2, 6, 8)
    z = torch.nn.functional.avg_pool2d(model.encode(x), 2)
    torch.manual_seed(2)
    enable_mc_dropout(model)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(model.head(z), 1) for _ in range(4)]).mean(0)
    torch.testing.assert_close(mean_p, expected)
    feats = mc_patch_features(model, x, PatchGrid(3, 4), 4, stride=2)
    assert feats.shape == (2, 12, 13)


def numpy_extra_metrics(p: np.ndarray) -> dict[str, np.ndarray]:
    """Each extra metric per pixel, straight from the stored samples ``[T, B, C, H, W]``."""
    mean = p.mean(0)
    top = np.sort(mean, axis=1)[:, ::-1]
    votes = np.stack([(p.argmax(2) == c).sum(0) for c in range(p.shape[2])], 1)
    return {
        "margin": top[:, 0] - top[:, 1],
        "least_confidence": 1 - mean.max(1),
        "variation_ratio": 1 - votes.max(1) / p.shape[0],
        "prob_std": p.std(0).mean(1),
    }


@pytest.mark.parametrize("metric", EXTRA_METRICS)
def test_extra_metrics_match_numpy(model_and_images, metric) -> None:
    model, x = model_and_images
    with torch.no_grad():
        # Without its bias the untrained head's argmax follows the dropout mask, so the samples
        # disagree on the class and the variation ratio is not 0 everywhere.
        model.classifier.bias.zero_()
    samples = 9
    p = stored_samples(model, x, samples, seed=4)
    torch.manual_seed(4)
    maps = mc_pixel_maps(model, x, samples, extra=(metric,))
    assert set(maps.extra) == {metric}
    expected = numpy_extra_metrics(p)[metric]
    np.testing.assert_allclose(maps.extra[metric].numpy(), expected, atol=1e-5)
    assert np.ptp(expected) > 1e-3  # the metric varies over pixels: a constant would pass too


def test_extra_metrics_leave_the_default_columns_and_pool_mean_and_extreme(
    model_and_images,
) -> None:
    model, x = model_and_images
    grid = PatchGrid(3, 4)
    torch.manual_seed(2)
    default = mc_patch_features(model, x, grid, 6)
    torch.manual_seed(2)
    every = mc_patch_features(model, x, grid, 6, uncertainty=UNCERTAINTY_COLUMNS)
    layout = FeatureLayout.positional(5, tuple(UNCERTAINTY_COLUMNS))
    assert every.shape == (2, 12, layout.num_columns)
    g = layout.num_global
    # The same dropout masks: the default columns are bit-identical with the extra ones added.
    np.testing.assert_array_equal(every[..., :3], default[..., :3])
    np.testing.assert_array_equal(every[..., g:], default[..., 3:])
    torch.manual_seed(2)
    maps = mc_pixel_maps(model, x, 6, extra=EXTRA_METRICS).extra
    ys, xs = grid.edges(12, 16)
    window = (slice(None), slice(ys[1], ys[2]), slice(xs[2], xs[3]))  # patch (1, 2)
    for metric in EXTRA_METRICS:
        mean_col, extreme_col = (layout.names.index(c) for c in UNCERTAINTY_COLUMNS[metric])
        pixels = maps[metric][window].numpy()
        extreme = pixels.min((-2, -1)) if metric == "margin" else pixels.max((-2, -1))
        np.testing.assert_allclose(every[:, 6, mean_col], pixels.mean((-2, -1)), atol=1e-6)
        np.testing.assert_allclose(every[:, 6, extreme_col], extreme, atol=1e-6)
    assert (every >= 0).all() and (every <= layout.upper_bounds()).all()


def test_unknown_metric_is_refused(model_and_images) -> None:
    model, x = model_and_images
    with pytest.raises(ValueError, match="unknown metric"):
        mc_pixel_maps(model, x, 2, extra=("mutual_info",))
