"""Item 6: a malformed COCO polygon is refused, naming its annotation, not dropped silently."""

from __future__ import annotations

import pytest

from misical_gym.data import CocoJson
from misical_gym.errors import DatasetError

from .forge import write_coco_json


@pytest.mark.parametrize(
    "polygon",
    [[2, 2, 20, 2, 20], [2, 2, 20, 2], [], {"x": 1}],
    ids=["odd", "two points", "empty", "not a list"],
)
def test_item06_malformed_polygons_are_refused(tmp_path, polygon) -> None:
    image_dir, annotations = write_coco_json(tmp_path, 2, polygon=polygon)
    with pytest.raises(DatasetError, match="annotation 101 has polygon"):
        CocoJson(image_dir, annotations)


def test_item06_a_triangle_is_painted(tmp_path) -> None:
    image_dir, annotations = write_coco_json(tmp_path, 2, polygon=[2, 2, 20, 2, 20, 20])
    _, label = CocoJson(image_dir, annotations)[0]
    assert (label != 255).sum() > 100
