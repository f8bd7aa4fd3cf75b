"""The embedded synthetic world: offline, deterministic scenes built for class-targeted mining.

The world is designed, not drawn at random, so that it reproduces the situation MiSiCAL exists
for. A few **rare** thing classes are small and look like a **frequent look-alike** class. They
always sit on an **easy context** class, a large, sharply coloured "stuff" region where the
look-alike never appears. A small segmenter trained on a few hundred images barely sees a rare
class on its own. It labels a rare object as its context, its look-alike or another frequent
thing, with a weak, noisy rare score, while it segments the context sharply. "Look-alike shape
AND context" then finds the rare class and its own presence score does not. (That holds for a
mildly class-weighted loss. A strongly weighted one learns part of a rare class from the handful
of init examples, and its own score then competes with the context-gated one.) With all pool
labels the class is learnable, because the context fully identifies it.

Scenes (one per image, drawn from ``np.random.default_rng([seed, index])``). A top region sits
above one or two ground layers; outdoor horizons wave a little:

========  =====  ====  ======  ==============================================
scene     share  top   ground  optional extra ground layer (share of scenes)
========  =====  ====  ======  ==============================================
park      0.26   sky   grass   road in front (0.30), water behind (0.15)
street    0.22   sky   road    grass behind (0.40)
field     0.10   sky   dirt    grass behind (0.40)
beach     0.10   sky   sand    water behind (0.35)
lake      0.12   sky   water   grass in front (0.30)
slope     0.10   sky   snow    none
dining    0.10   wall  table   none
========  =====  ====  ======  ==============================================

Classes, by train id. A thing is placed on one of the ground layers listed for it. ``p`` is the
chance that an image holding such a layer gets the thing at all, and ``n`` the most instances it
then gets. The last column is the measured share of 4x4-grid patches holding the class (seed 0,
3,000 images, 64 px):

==  ==========  =====  ====================  ====  ===  ===============================  ======
id  name        kind   placed on             p     n    look                             patch%
==  ==========  =====  ====================  ====  ===  ===============================  ======
0   sky         stuff  top of outdoor        -     -    blue, lighter near the horizon     41.8
1   wall        stuff  top of dining         -     -    beige                               4.7
2   grass       stuff  ground                -     -    green, strong texture              25.5
3   dirt        stuff  ground                -     -    dark brown (decoy for table)        6.4
4   sand        stuff  ground                -     -    pale cream (decoy for snow)         7.0
5   snow        stuff  ground                -     -    white, faint texture                7.3
6   water       stuff  ground                -     -    deep blue                          12.1
7   road        stuff  ground                -     -    blue-grey (decoy for water)        18.4
8   table       stuff  ground (dining)       -     -    light brown                         7.8
9   person      thing  all but water, table  0.45  2    head over an elliptic body          6.9
10  tree        thing  grass, snow           0.50  3    trunk under a round canopy          8.3
11  car         thing  road                  0.70  2    body, cabin, two black wheels       4.7
12  boat        thing  water                 0.50  1    trapezoid hull, triangle sail       1.4
13  cup         thing  table                 0.85  3    disc with a handle (top view)       1.7
14  fence       thing  grass, dirt, sand     0.45  2    2-4 parallel bars                   6.0
15  rake        thing  dirt/grass/sand/road  0.40  1    handle, crossbar, 3-5 tines         4.7
16  skateboard  thing  road, sand            0.45  2    squarish board                      3.4
17  skis        rare   snow only             0.18  1    2 parallel bars                     0.26
18  fork        rare   table only            0.18  1    handle, crossbar, 3-4 tines         0.35
19  surfboard   rare   water only            0.15  1    pointed elliptic board              0.36
==  ==========  =====  ====================  ====  ===  ===============================  ======

Rare classes, their context and their look-alike:

==========  =======  ==========  ===================================================
rare        context  look-alike  what differs besides context
==========  =======  ==========  ===================================================
skis        snow     fence       always 2 bars (fences 2-4), slightly shorter
fork        table    rake        3-4 tines (rakes 3-5), shorter handle
surfboard   water    skateboard  pointed ends (an ellipse) instead of squarish ones
==========  =======  ==========  ===================================================

The rules that make the world work:

- A rare thing lies entirely on its context, so P(context in image | rare) = 1. A look-alike is
  never placed on its rare partner's context (no fence on snow, no rake on a table, no
  skateboard on water). It can still share an image with that context (a skateboard on the road
  of a park by a lake).
- The six rare and look-alike classes share one palette of saturated colours (with a per-object
  jitter), one stroke width and one size range (each object scaled by 0.8-1.25). Colour and size
  never tell them apart, and a handful of examples does not cover a class while hundreds do.
- Each context has a frequent **decoy**: a stuff class of similar colour where the look-alike
  is common (sand for snow, dirt for table, road for water). A model that has seen only a few
  rare examples over-generalises the rare class to the look-alike on the decoy. Its rare score
  is then noisy, while a context-gated score is not.
- Stuff colours stay distinct (plus per-pixel noise), so contexts are easy to segment. Strokes
  are at least 2 px wide at 64 px, so a small segmenter can learn every class from enough labels.
- Every geometric size scales with ``image_size / 64``.

:meth:`SyntheticScenes.cooccurrence`, :meth:`SyntheticScenes.class_presence` and
:meth:`SyntheticScenes.patch_presence` measure the statistics on the generated images themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from misical_gym.data.patches import PatchGrid

CLASS_NAMES: tuple[str, ...] = (
    "sky",
    "wall",
    "grass",
    "dirt",
    "sand",
    "snow",
    "water",
    "road",
    "table",
    "person",
    "tree",
    "car",
    "boat",
    "cup",
    "fence",
    "rake",
    "skateboard",
    "skis",
    "fork",
    "surfboard",
)
(SKY, WALL, GRASS, DIRT, SAND, SNOW, WATER, ROAD, TABLE) = range(9)
(PERSON, TREE, CAR, BOAT, CUP, FENCE, RAKE, SKATEBOARD, SKIS, FORK, SURFBOARD) = range(9, 20)
STUFF_CLASSES: tuple[int, ...] = (SKY, WALL, GRASS, DIRT, SAND, SNOW, WATER, ROAD, TABLE)
RARE_CLASSES: tuple[int, ...] = (SKIS, FORK, SURFBOARD)
RARE_CONTEXTS: dict[int, int] = {SKIS: SNOW, FORK: TABLE, SURFBOARD: WATER}
LOOKALIKES: dict[int, int] = {SKIS: FENCE, FORK: RAKE, SURFBOARD: SKATEBOARD}

# (name, probability, top class, main ground, optional layers (class, probability, position)).
# Ground layers stack from the horizon down; "far" goes between the horizon and the main ground,
# "near" below it.
_SCENES: tuple[tuple[str, float, int, int, tuple[tuple[int, float, str], ...]], ...] = (
    ("park", 0.26, SKY, GRASS, ((ROAD, 0.30, "near"), (WATER, 0.15, "far"))),
    ("street", 0.22, SKY, ROAD, ((GRASS, 0.40, "far"),)),
    ("field", 0.10, SKY, DIRT, ((GRASS, 0.40, "far"),)),
    ("beach", 0.10, SKY, SAND, ((WATER, 0.35, "far"),)),
    ("lake", 0.12, SKY, WATER, ((GRASS, 0.30, "near"),)),
    ("slope", 0.10, SKY, SNOW, ()),
    ("dining", 0.10, WALL, TABLE, ()),
)
_SCENE_P = np.array([s[1] for s in _SCENES])
_GRID_4X4 = PatchGrid(4, 4)

# (class, grounds it may be placed on, probability per eligible image, max instances, placement).
# "on": the whole object lies inside the layer; "stand": its anchor (feet, wheels, trunk) does.
# Drawing follows this order, so small things end on top and stay intact.
_THINGS: tuple[tuple[int, tuple[int, ...], float, int, str], ...] = (
    (TREE, (GRASS, SNOW), 0.50, 3, "stand"),
    (CAR, (ROAD,), 0.70, 2, "stand"),
    (BOAT, (WATER,), 0.50, 1, "stand"),
    (PERSON, (GRASS, DIRT, SAND, ROAD, SNOW), 0.45, 2, "stand"),
    (CUP, (TABLE,), 0.85, 3, "on"),
    (FENCE, (GRASS, DIRT, SAND), 0.45, 2, "on"),
    (RAKE, (DIRT, GRASS, SAND, ROAD), 0.40, 1, "on"),
    (SKATEBOARD, (ROAD, SAND), 0.45, 2, "on"),
    (SKIS, (SNOW,), 0.18, 1, "on"),
    (FORK, (TABLE,), 0.18, 1, "on"),
    (SURFBOARD, (WATER,), 0.15, 1, "on"),
)

# Stuff colours (RGB) and per-pixel noise amplitude of every class. Distinct colours make stuff
# easy. Grass and dirt get a stronger texture. Sand, dirt and road are the decoys of snow, table
# and water: similar enough for a rare class learnt from a few examples to spill over onto the
# look-alike there, distinct enough to segment.
_STUFF_RGB = np.array(
    [
        [115, 165, 230],  # sky
        [205, 190, 160],  # wall
        [70, 140, 55],  # grass
        [92, 72, 52],  # dirt
        [226, 218, 190],  # sand
        [236, 239, 245],  # snow
        [35, 85, 165],  # water
        [62, 78, 118],  # road
        [172, 112, 62],  # table
    ],
    dtype=np.float32,
)
_NOISE = np.array([4, 5, 12, 14, 8, 4, 7, 6, 5] + [6] * 11, dtype=np.float32)

# One palette for every rare and look-alike class, so colour never separates them.
_MIMIC_RGB = (
    (200, 40, 40),
    (40, 60, 200),
    (240, 120, 20),
    (205, 50, 165),
    (50, 200, 200),
    (120, 40, 190),
    (25, 25, 25),
    (235, 205, 40),
)
_SHIRT_RGB = ((200, 40, 40), (40, 90, 200), (240, 200, 40), (30, 30, 30), (250, 250, 250))
_CAR_RGB = ((190, 30, 30), (30, 60, 170), (230, 200, 40), (240, 240, 240), (25, 25, 25))
_HULL_RGB = ((240, 240, 240), (180, 40, 40), (120, 75, 35))
_CUP_RGB = ((245, 245, 245), (60, 165, 70), (150, 210, 240))
_SKIN = (225, 185, 145)
_BLACK = (20, 20, 20)

# A part of a thing, in the thing's own frame (u right, v down, before rotation):
# ("trap", uc, vc, half width at the top, half width at the bottom, half height): a trapezoid
# (rectangle when both widths match, triangle when the top width is 0);
# ("ell", uc, vc, half width, half height, exponent): a superellipse (2 = ellipse, larger =
# squarer).
_Part = tuple[str, float, float, float, float, float]


class SyntheticScenes:
    """Deterministic synthetic scenes with designed rare classes, contexts and look-alikes.

    Item ``i`` depends only on ``(seed, i)``, never on the order of access. Items are generated
    on first access and cached (about ``4 * image_size**2`` bytes each).

    Args:
        num_images: Number of images.
        seed: Seed of the world; any non-negative integer.
        image_size: Side of the square images in pixels (32 to 256). Shapes scale with it.

    Attributes:
        class_names: The 20 class names, in train-id order (see the module's table).
        image_ids: ``"synthetic-<seed>-<index>"`` for every image.
        rare_classes: Train ids of the designed rare classes.
        rare_contexts: Rare class id -> its context (stuff) class id.
        lookalikes: Rare class id -> its frequent look-alike class id.
        stuff_classes: Train ids of the stuff (background region) classes.
    """

    class_names: tuple[str, ...] = CLASS_NAMES
    rare_classes: tuple[int, ...] = RARE_CLASSES
    stuff_classes: tuple[int, ...] = STUFF_CLASSES

    def __init__(self, num_images: int, seed: int, image_size: int = 64) -> None:
        for name, value, low, high in (
            ("num_images", num_images, 1, None),
            ("seed", seed, 0, None),
            ("image_size", image_size, 32, 256),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"SyntheticScenes: {name} must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                bound = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise ValueError(f"SyntheticScenes: {name} must be {bound}, got {value}")
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.image_ids = tuple(f"synthetic-{self.seed}-{i:06d}" for i in range(self.num_images))
        self.rare_contexts = dict(RARE_CONTEXTS)
        self.lookalikes = dict(LOOKALIKES)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def spec(self) -> dict[str, Any]:
        """``{"kind": "synthetic", **constructor arguments}``: rebuilds the same dataset."""
        return {
            "kind": "synthetic",
            "num_images": self.num_images,
            "seed": self.seed,
            "image_size": self.image_size,
        }

    def __reduce__(self) -> tuple[type[SyntheticScenes], tuple[int, int, int]]:
        # Pickle the recipe, not the cache: workers regenerate what they touch.
        return type(self), (self.num_images, self.seed, self.image_size)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image uint8 [S, S, 3], label uint8 [S, S])`` of image ``index``."""
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"SyntheticScenes index must be an integer, got {index!r}")
        i = int(index) + (self.num_images if index < 0 else 0)
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {index} out of range for {self.num_images} images")
        if i not in self._cache:
            self._cache[i] = _render(np.random.default_rng([self.seed, i]), self.image_size)
        image, label = self._cache[i]
        # Copies, so that a caller editing an item in place cannot corrupt the cache.
        return image.copy(), label.copy()

    def class_presence(self) -> np.ndarray:
        """bool ``[num_images, C]``: whether each class occurs in each image."""
        c = len(self.class_names)
        presence = np.zeros((self.num_images, c), dtype=bool)
        for i in range(self.num_images):
            presence[i] = np.bincount(self[i][1].ravel(), minlength=c)[:c] > 0
        return presence

    def patch_presence(self, grid: PatchGrid = _GRID_4X4) -> np.ndarray:
        """bool ``[num_images, grid.num_patches, C]``: whether each class occurs in each patch."""
        c = len(self.class_names)
        onehot = np.eye(c, dtype=np.int32)
        return np.stack([grid.pool_sum(onehot[self[i][1]]) > 0 for i in range(self.num_images)])

    def cooccurrence(self) -> np.ndarray:
        """float64 ``[C, C]``: ``P(class j in image | class i in image)``, measured.

        Row ``i`` is NaN when class ``i`` occurs in no image (possible only for tiny worlds).
        """
        presence = self.class_presence().astype(np.float64)
        joint = presence.T @ presence
        counts = np.diag(joint).copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return joint / counts[:, None]


def _render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: stuff layers, then things, then per-pixel noise."""
    scale = size / 64.0
    _, _, top, main, extras = _SCENES[rng.choice(len(_SCENES), p=_SCENE_P)]
    grounds = [main]
    for cls, prob, position in extras:
        if rng.random() < prob:
            grounds.insert(0 if position == "far" else len(grounds), cls)

    # Layer boundaries per column: bounds[k] is where ground layer k starts; the last entry is the
    # image bottom. Outdoor horizons and shores wave a little; a table edge is straight.
    xs = np.arange(size, dtype=np.float64)
    wave = 0.0 if top == WALL else 2.5 * scale
    horizon = rng.uniform(0.22, 0.42) * size
    starts = [horizon]
    for _ in grounds[1:]:
        starts.append(starts[-1] + rng.uniform(0.35, 0.6) * (size - starts[-1]))
    bounds = [
        s + rng.uniform(0, wave) * np.sin(xs / (rng.uniform(20, 60) * scale) + rng.uniform(0, 6.3))
        for s in starts
    ]
    bounds.append(np.full(size, float(size)))

    rows = np.arange(size, dtype=np.float64)[:, None]
    label = np.full((size, size), top, dtype=np.uint8)
    for cls, b in zip(grounds, bounds, strict=False):
        label[rows >= b[None, :]] = cls

    palette = _STUFF_RGB + rng.uniform(-10, 10, _STUFF_RGB.shape).astype(np.float32)
    image = palette[label]
    if top == SKY:  # lighter towards the horizon
        shade = np.minimum(rows / horizon, 1.0) * 30.0 * (label == SKY)
        image += shade[..., None].astype(np.float32)

    layers = {cls: (bounds[k], bounds[k + 1]) for k, cls in enumerate(grounds)}
    for cls, allowed, prob, most, placement in _THINGS:
        present = [g for g in allowed if g in layers]
        if not present or rng.random() >= prob:
            continue
        for _ in range(int(rng.integers(1, most + 1))):
            parts, colours, angle = _shape(cls, rng, scale)
            layer = layers[present[int(rng.integers(len(present)))]]
            at = _place(rng, parts, layer, placement == "on", size)
            if at is not None:
                _paint(image, label, cls, at, angle, parts, colours)

    image += rng.normal(0.0, 1.0, image.shape).astype(np.float32) * _NOISE[label][..., None]
    return np.clip(image, 0, 255).astype(np.uint8), label


def _jitter(rng: np.random.Generator, rgb: Sequence[int], spread: float = 12) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32) + rng.uniform(-spread, spread, 3).astype(np.float32)


def _pick(rng: np.random.Generator, palette: Sequence[Sequence[int]]) -> np.ndarray:
    return _jitter(rng, palette[int(rng.integers(len(palette)))])


def _shape(
    cls: int, rng: np.random.Generator, s: float
) -> tuple[list[_Part], list[np.ndarray], float]:
    """The parts, their colours and the rotation (radians) of one instance of thing ``cls``."""
    u = rng.uniform
    if cls in (FENCE, SKIS, RAKE, FORK, SKATEBOARD, SURFBOARD):
        # Look-alikes and rare things vary in size and colour so that a few examples do not
        # cover their class, while hundreds do.
        s *= u(0.8, 1.25)
        colour = _jitter(rng, _MIMIC_RGB[int(rng.integers(len(_MIMIC_RGB)))], 25)
    if cls in (FENCE, SKIS):
        # Parallel vertical bars, tilted up to 35 degrees; skis are always 2 bars, fences 2-4.
        bars = int(rng.choice([2, 3, 4], p=[0.2, 0.4, 0.4])) if cls == FENCE else 2
        half_len = u(4.5, 7.5) * s if cls == FENCE else u(4.5, 6.5) * s
        half_w, gap = u(1.2, 1.6) * s, 5.0 * s
        parts: list[_Part] = [
            ("trap", (k - (bars - 1) / 2) * gap, 0.0, half_w, half_w, half_len) for k in range(bars)
        ]
        return parts, [colour] * bars, math.radians(u(-35, 35))
    if cls in (RAKE, FORK):
        # A handle ending in a crossbar with tines, lying at any angle.
        tines = int(rng.choice([3, 4, 5], p=[0.2, 0.5, 0.3] if cls == RAKE else [0.7, 0.3, 0.0]))
        handle = (u(3.5, 6.0) if cls == RAKE else u(3.0, 4.5)) * s
        tine, hw, gap = u(2.2, 3.0) * s, 1.2 * s, 4.5 * s
        span = (tines - 1) * gap / 2 + hw
        parts = [("trap", 0.0, handle + hw, hw, hw, handle), ("trap", 0.0, 0.0, span, span, hw)]
        parts += [
            ("trap", (k - (tines - 1) / 2) * gap, -hw - tine, hw, hw, tine) for k in range(tines)
        ]
        return parts, [colour] * len(parts), u(0, 2 * math.pi)
    if cls in (SKATEBOARD, SURFBOARD):
        # Near-horizontal boards; pointed (ellipse) or squarish (high-exponent superellipse).
        exponent = 2.0 if cls == SURFBOARD else 4.0
        part: _Part = ("ell", 0.0, 0.0, u(6.0, 8.5) * s, u(2.2, 2.8) * s, exponent)
        return [part], [colour], math.radians(u(-40, 40))
    if cls == PERSON:
        body_w, body_h, head = u(2.4, 3.2) * s, u(4.5, 6.0) * s, u(1.9, 2.4) * s
        parts = [
            ("ell", 0.0, -body_h, body_w, body_h, 2.0),
            ("ell", 0.0, -2 * body_h - head + 0.5 * s, head, head, 2.0),
        ]
        return parts, [_pick(rng, _SHIRT_RGB), _jitter(rng, _SKIN)], 0.0
    if cls == TREE:
        trunk_w, trunk_h = u(1.2, 1.8) * s, u(3.0, 5.0) * s
        crown_w, crown_h = u(4.5, 7.0) * s, u(5.0, 8.0) * s
        parts = [
            ("trap", 0.0, -trunk_h, trunk_w, trunk_w, trunk_h),
            ("ell", 0.0, -2 * trunk_h - 0.8 * crown_h, crown_w, crown_h, 2.0),
        ]
        return parts, [_jitter(rng, (95, 62, 30)), _jitter(rng, (30, 100, 40))], 0.0
    if cls == CAR:
        half_w, half_h, wheel = u(6.5, 9.0) * s, u(2.2, 3.0) * s, u(1.6, 2.0) * s
        body = _pick(rng, _CAR_RGB)
        parts = [
            ("trap", 0.0, -half_h - wheel, half_w, half_w, half_h),
            ("trap", 0.0, -2 * half_h - wheel - 1.5 * s, 0.55 * half_w, 0.75 * half_w, 1.5 * s),
            ("ell", -half_w + wheel + s, -wheel, wheel, wheel, 2.0),
            ("ell", half_w - wheel - s, -wheel, wheel, wheel, 2.0),
        ]
        black = _jitter(rng, _BLACK)
        return parts, [body, body, black, black], 0.0
    if cls == BOAT:
        hull_w, hull_h, sail_h = u(6.5, 9.0) * s, u(1.4, 1.9) * s, u(3.5, 5.0) * s
        parts = [
            ("trap", 0.0, -hull_h, hull_w, hull_w - 2.5 * s, hull_h),
            ("trap", u(-2, 2) * s, -2 * hull_h - sail_h, 0.0, u(2.5, 3.5) * s, sail_h),
        ]
        return parts, [_pick(rng, _HULL_RGB), _jitter(rng, (245, 245, 245))], 0.0
    if cls == CUP:
        radius = u(2.5, 3.4) * s
        parts = [
            ("ell", 0.0, 0.0, radius, radius, 2.0),
            ("trap", radius + 0.8 * s, 0.0, 1.2 * s, 1.2 * s, 1.0 * s),
        ]
        colour = _pick(rng, _CUP_RGB)
        return parts, [colour, colour], u(0, 2 * math.pi)
    raise ValueError(f"no shape for class {cls}")


def _extent(parts: Sequence[_Part]) -> float:
    """Radius, around the frame origin, of a disc that holds every part at any rotation."""
    return max(
        math.hypot(abs(uc) + max(a, b), abs(vc) + c)
        if kind == "trap"
        else math.hypot(abs(uc) + a, abs(vc) + b)
        for kind, uc, vc, a, b, c in parts
    )


def _place(
    rng: np.random.Generator,
    parts: Sequence[_Part],
    layer: tuple[np.ndarray, np.ndarray],
    inside: bool,
    size: int,
) -> tuple[float, float] | None:
    """Anchor ``(y, x)`` of a thing on a ground layer, or None when it does not fit.

    With ``inside`` the whole thing lies within the layer; otherwise only its anchor does.
    """
    radius = _extent(parts)
    margin = radius if inside else 1.0
    lo_x = min(margin, size / 2 - 1)
    x = rng.uniform(lo_x, size - lo_x)
    cols = slice(max(0, int(x - margin)), min(size, int(x + margin) + 1))
    top = float(layer[0][cols].max()) + margin
    bottom = float(layer[1][cols].min()) - margin
    if bottom <= top:
        return None
    return rng.uniform(top, bottom), x


def _paint(
    image: np.ndarray,
    label: np.ndarray,
    cls: int,
    at: tuple[float, float],
    angle: float,
    parts: Sequence[_Part],
    colours: Sequence[np.ndarray],
) -> None:
    """Paint the parts of one thing, rotated by ``angle`` around ``at``, in place."""
    size = label.shape[0]
    radius = _extent(parts)
    y0, x0 = max(0, int(at[0] - radius)), max(0, int(at[1] - radius))
    y1, x1 = min(size, int(at[0] + radius) + 2), min(size, int(at[1] + radius) + 2)
    if y1 <= y0 or x1 <= x0:
        return
    dy = np.arange(y0, y1, dtype=np.float64)[:, None] - at[0]
    dx = np.arange(x0, x1, dtype=np.float64)[None, :] - at[1]
    cos, sin = math.cos(angle), math.sin(angle)
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    window_image, window_label = image[y0:y1, x0:x1], label[y0:y1, x0:x1]
    for (kind, uc, vc, a, b, c), colour in zip(parts, colours, strict=True):
        pu, pv = u - uc, v - vc
        if kind == "trap":
            # Half width grows linearly from a (top, pv = -c) to b (bottom, pv = +c).
            half_width = a + (b - a) * (pv + c) / (2 * c)
            mask = (np.abs(pv) <= c) & (np.abs(pu) <= half_width)
        else:
            mask = np.abs(pu / a) ** c + np.abs(pv / b) ** c <= 1.0
        window_image[mask] = colour
        window_label[mask] = cls
