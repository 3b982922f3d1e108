"""Tests for the synthetic street-scene generator (Cityscapes layout)."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label, name2label
from PIL import Image

from unetseg.core import parallel
from unetseg.data.synthetic import CITIES, render_scene, synthesize

SIZE = (128, 64)
IMAGE_NAME = re.compile(r"(?P<city>[a-z]+)_\d{6}_\d{6}_leftImg8bit\.png")
REQUIRED = (
    "sky",
    "road",
    "sidewalk",
    "building",
    "vegetation",
    "terrain",
    "pole",
    "traffic sign",
    "traffic light",
    "car",
    "person",
    "ego vehicle",
)


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    return [render_scene(np.random.default_rng([7, 0, i]), 256, 128) for i in range(20)]


def _files(root: Path) -> list[Path]:
    """The PNGs written (the completion marker aside)."""
    return sorted(
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.suffix == ".png"
    )


def _label_path(image: Path) -> Path:
    split, city = image.parent.parent.name, image.parent.name
    root = image.parents[3]
    name = image.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    return root / "gtFine" / split / city / name


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", 3, 2, size=SIZE, seed=5, progress=False)
    synthesize(tmp_path / "b", 3, 2, size=SIZE, seed=5, progress=False)
    files = _files(tmp_path / "a")
    assert len(files) == 10
    assert json.loads((tmp_path / "a" / "synthetic.json").read_text())["train"] == 3
    assert files == _files(tmp_path / "b")
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", 2, 0, size=SIZE, seed=1, progress=False)
    b = synthesize(tmp_path / "b", 2, 0, size=SIZE, seed=2, progress=False)
    for pa, pb in zip(a, b):
        assert pa.relative_to(tmp_path / "a") == pb.relative_to(tmp_path / "b")
        assert pa.read_bytes() != pb.read_bytes()


def test_scene_does_not_depend_on_split_sizes(tmp_path: Path) -> None:
    few = synthesize(tmp_path / "few", 1, 1, size=SIZE, seed=3, progress=False)
    many = synthesize(tmp_path / "many", 4, 2, size=SIZE, seed=3, progress=False)
    for path in few:
        twin = tmp_path / "many" / path.relative_to(tmp_path / "few")
        assert twin in many
        assert path.read_bytes() == twin.read_bytes()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no process pool to compare")
def test_process_pool_matches_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 17  # parallel_map pools from 16 items on
    pooled = synthesize(tmp_path / "pool", n, 0, size=(64, 32), seed=4, progress=False)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 1)
    serial = synthesize(tmp_path / "serial", n, 0, size=(64, 32), seed=4, progress=False)
    assert [p.relative_to(tmp_path / "pool") for p in pooled] == [
        p.relative_to(tmp_path / "serial") for p in serial
    ]
    for f in _files(tmp_path / "pool"):
        assert (tmp_path / "pool" / f).read_bytes() == (tmp_path / "serial" / f).read_bytes()


def test_layout_file_names_and_formats(tmp_path: Path) -> None:
    paths = synthesize(tmp_path, 4, 2, size=SIZE, seed=0, progress=False)
    assert len(paths) == 6
    assert [p.parent.parent.name for p in paths] == ["train"] * 4 + ["val"] * 2
    assert {p.parent.name for p in paths} == set(CITIES)
    for path in paths:
        assert path.parents[2] == tmp_path / "leftImg8bit"
        match = IMAGE_NAME.fullmatch(path.name)
        assert match is not None and match["city"] == path.parent.name
        with Image.open(path) as image, Image.open(_label_path(path)) as label:
            assert image.format == label.format == "PNG"
            assert image.mode == "RGB" and image.size == SIZE
            assert label.mode == "L" and label.size == SIZE
    # Nothing but the final PNGs: no temporary files left behind.
    assert len(_files(tmp_path)) == 2 * len(paths)
    assert all(not f.name.startswith(".") for f in _files(tmp_path))


def test_render_scene_shapes_and_types() -> None:
    image, label = render_scene(np.random.default_rng(0), 96, 48)
    assert image.shape == (48, 96, 3) and image.dtype == np.uint8
    assert label.shape == (48, 96) and label.dtype == np.uint8


def test_labels_are_cityscapes_ids_and_classes_occur(scenes) -> None:
    seen = set()
    for _, label in scenes:
        seen |= {int(v) for v in np.unique(label)}
    assert seen <= set(id2label)
    missing = {n for n in REQUIRED if name2label[n].id not in seen}
    assert not missing


def test_colour_does_not_separate_classes(scenes) -> None:
    """Road, sidewalk and building swap brightness order between scenes.

    With one fixed colour per class, a global lighting change would keep the order in every
    scene; here each pair is brighter in one scene and darker in another.
    """
    names = ("road", "sidewalk", "building")
    brightness = []
    for image, label in scenes:
        masks = {n: label == name2label[n].id for n in names}
        if all(m.any() for m in masks.values()):
            brightness.append({n: image[m].mean() for n, m in masks.items()})
    assert len(brightness) >= 5
    for a, b in (("road", "sidewalk"), ("road", "building"), ("sidewalk", "building")):
        brighter = {bool(scene[a] > scene[b]) for scene in brightness}
        assert brighter == {True, False}, (a, b, brightness)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        synthesize(tmp_path, -1, 0, progress=False)
    with pytest.raises(ValueError):
        synthesize(tmp_path, 1, 0, size=(8, 8), progress=False)
