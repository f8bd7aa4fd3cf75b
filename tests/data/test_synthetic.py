"""The synthetic world: its contract, its determinism and its designed statistics."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from misical_gym.data.base import SegmentationDataset
from misical_gym.data.patches import PatchGrid
from misical_gym.data.synthetic import SyntheticScenes

N_STATS = 2_000


class WorldStats:
    """Statistics of one world measured straight from its label maps, independently of the class."""

    def __init__(self, world: SyntheticScenes) -> None:
        c = len(world.class_names)
        grid = PatchGrid(4, 4)
        onehot = np.eye(c, dtype=np.int32)
        labels = [world[i][1] for i in range(len(world))]
        self.world = world
        self.patch = np.stack([grid.pool_sum(onehot[lab]) > 0 for lab in labels])  # [N, 16, C]
        self.image = self.patch.any(axis=1)  # [N, C]
        self.patch_rate = self.patch.reshape(-1, c).mean(axis=0)
        self.image_rate = self.image.mean(axis=0)

    def p_image(self, given: int, other: int) -> float:
        """P(other in image | given in image)."""
        return float(self.image[self.image[:, given], other].mean())


@pytest.fixture(scope="module", params=[0, 7], ids=["seed0", "seed7"])
def stats(request: pytest.FixtureRequest) -> WorldStats:
    return WorldStats(SyntheticScenes(N_STATS, seed=request.param))


def _arrays(world: SyntheticScenes, order: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {i: world[i] for i in order}


def test_items_follow_the_dataset_contract() -> None:
    world = SyntheticScenes(20, seed=3)
    c = len(world.class_names)
    assert isinstance(world, SegmentationDataset)
    assert len(world) == 20
    assert len(world.image_ids) == 20 and len(set(world.image_ids)) == 20
    assert all(isinstance(i, str) for i in world.image_ids)
    assert len(set(world.class_names)) == c >= 12
    for i in range(len(world)):
        image, label = world[i]
        assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
        assert label.dtype == np.uint8 and label.shape == (64, 64)
        assert int(label.max()) < c  # the world labels every pixel: no ignore value
    assert image.std() > 0  # not a blank image


@pytest.mark.parametrize("size", [32, 96])
def test_other_image_sizes(size: int) -> None:
    image, label = SyntheticScenes(3, seed=0, image_size=size)[2]
    assert image.shape == (size, size, 3) and label.shape == (size, size)


def test_same_seed_gives_identical_items_in_any_access_order() -> None:
    forward = _arrays(SyntheticScenes(30, seed=5), list(range(30)))
    shuffled = list(np.random.default_rng(0).permutation(30))
    backward = _arrays(SyntheticScenes(30, seed=5), [int(i) for i in shuffled])
    for i in range(30):
        np.testing.assert_array_equal(forward[i][0], backward[i][0])
        np.testing.assert_array_equal(forward[i][1], backward[i][1])


def test_item_does_not_depend_on_world_size() -> None:
    small, large = SyntheticScenes(5, seed=2), SyntheticScenes(500, seed=2)
    np.testing.assert_array_equal(small[4][0], large[4][0])
    np.testing.assert_array_equal(small[4][1], large[4][1])


def test_different_seeds_give_different_worlds() -> None:
    a, b = SyntheticScenes(10, seed=0), SyntheticScenes(10, seed=1)
    assert all(not np.array_equal(a[i][0], b[i][0]) for i in range(10))
    assert any(not np.array_equal(a[i][1], b[i][1]) for i in range(10))


def test_spec_rebuilds_the_same_world() -> None:
    world = SyntheticScenes(12, seed=9, image_size=48)
    spec = json.loads(json.dumps(world.spec))  # JSON-serialisable
    assert spec == {"kind": "synthetic", "num_images": 12, "seed": 9, "image_size": 48}
    rebuilt = SyntheticScenes(**{k: v for k, v in spec.items() if k != "kind"})
    assert rebuilt.image_ids == world.image_ids
    for i in range(12):
        np.testing.assert_array_equal(rebuilt[i][0], world[i][0])
        np.testing.assert_array_equal(rebuilt[i][1], world[i][1])


def test_pickle_keeps_the_recipe() -> None:
    world = SyntheticScenes(8, seed=4)
    world[0]
    clone = pickle.loads(pickle.dumps(world))
    assert clone.spec == world.spec
    np.testing.assert_array_equal(clone[0][1], world[0][1])


def test_editing_an_item_does_not_change_the_world() -> None:
    world = SyntheticScenes(2, seed=0)
    image, label = world[1]
    image[:] = 0
    label[:] = 0
    assert world[1][0].any() and world[1][1].any()


def test_negative_index_and_bounds() -> None:
    world = SyntheticScenes(4, seed=0)
    np.testing.assert_array_equal(world[-1][1], world[3][1])
    with pytest.raises(IndexError):
        world[4]
    with pytest.raises(IndexError):
        world[-5]
    with pytest.raises(TypeError):
        world[1.0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_images": 0, "seed": 0}, ValueError),
        ({"num_images": 5, "seed": -1}, ValueError),
        ({"num_images": 5, "seed": 0, "image_size": 16}, ValueError),
        ({"num_images": 5, "seed": 0, "image_size": 1000}, ValueError),
        ({"num_images": 5.0, "seed": 0}, TypeError),
        ({"num_images": True, "seed": 0}, TypeError),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error, match="SyntheticScenes"):
        SyntheticScenes(**kwargs)  # type: ignore[arg-type]


def test_designed_triples_are_exposed() -> None:
    world = SyntheticScenes(1, seed=0)
    names = world.class_names
    assert len(world.rare_classes) >= 3
    assert set(world.rare_contexts) == set(world.lookalikes) == set(world.rare_classes)
    for rare in world.rare_classes:
        context, lookalike = world.rare_contexts[rare], world.lookalikes[rare]
        assert context in world.stuff_classes
        assert lookalike not in world.rare_classes and lookalike not in world.stuff_classes
    triples = {
        names[r]: (names[world.rare_contexts[r]], names[world.lookalikes[r]])
        for r in world.rare_classes
    }
    assert triples["skis"] == ("snow", "fence")
    assert triples["fork"] == ("table", "rake")


def test_rare_classes_are_rare_but_present(stats: WorldStats) -> None:
    for rare in stats.world.rare_classes:
        assert 0 < stats.patch_rate[rare] < 0.03, stats.world.class_names[rare]


def test_rare_classes_sit_on_their_context(stats: WorldStats) -> None:
    co = stats.world.cooccurrence()
    for rare, context in stats.world.rare_contexts.items():
        assert stats.p_image(rare, context) >= 0.9
        assert co[rare, context] >= 0.9
        # Also within the patch itself, which is what patch features see.
        in_patch = stats.patch[..., rare]
        assert stats.patch[..., context][in_patch].mean() >= 0.9


def test_lookalikes_are_frequent_and_live_elsewhere(stats: WorldStats) -> None:
    for rare, lookalike in stats.world.lookalikes.items():
        context = stats.world.rare_contexts[rare]
        assert stats.image_rate[lookalike] >= 0.1
        assert stats.patch_rate[lookalike] >= 5 * stats.patch_rate[rare]
        assert stats.p_image(lookalike, context) <= 0.25
        # In patches, the look-alike and the rare class's context (almost) never meet.
        assert stats.patch[..., context][stats.patch[..., lookalike]].mean() <= 0.05


def test_frequencies_are_long_tailed(stats: WorldStats) -> None:
    rates = stats.patch_rate
    assert (rates > 0).all()  # every class occurs
    least = set(np.argsort(rates)[: len(stats.world.rare_classes)].tolist())
    assert least == set(stats.world.rare_classes)
    assert rates.max() >= 100 * rates.min()
    ordered = np.sort(rates)[::-1]
    assert ordered[: len(ordered) // 4].sum() >= 0.5 * ordered.sum()  # a few classes dominate


def test_measurements_match_the_label_maps(stats: WorldStats) -> None:
    world = stats.world
    np.testing.assert_array_equal(world.class_presence(), stats.image)
    np.testing.assert_array_equal(world.patch_presence(PatchGrid(4, 4)), stats.patch)
    image = stats.image.astype(float)
    expected = (image.T @ image) / image.sum(axis=0)[:, None]
    np.testing.assert_allclose(world.cooccurrence(), expected)


def test_cooccurrence_of_a_tiny_world() -> None:
    world = SyntheticScenes(1, seed=0)
    co = world.cooccurrence()
    c = len(world.class_names)
    assert co.shape == (c, c)
    present = world.class_presence()[0]
    np.testing.assert_array_equal(np.diag(co)[present], 1.0)
    assert np.isnan(co[~present]).all()  # P(. | absent class) is undefined


def test_import_stays_light() -> None:
    code = (
        "import sys, misical_gym.data.synthetic; "
        "print(sorted(m for m in ('torch', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
