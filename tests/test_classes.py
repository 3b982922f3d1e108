"""Tests for the class sets: official Cityscapes tables, CamVid, custom YAML tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from cityscapesscripts.helpers.labels import name2label, trainId2label
from PIL import Image

from unetseg.core.classes import (
    IGNORE_INDEX,
    ClassSet,
    camvid11,
    cityscapes19,
    cityscapes24,
    load_class_set,
)
from unetseg.data.cache import prepare_split
from unetseg.data.cityscapes import find_cityscapes
from unetseg.data.io import read_mask_values

SAMPLE_STEM = "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine"


def _official_train_id(label_id: int) -> int:
    label = next(label for label in CITYSCAPES_LABELS if label.id == label_id)
    return IGNORE_INDEX if label.ignoreInEval else label.trainId


def test_cityscapes19_follows_the_official_table() -> None:
    classes = cityscapes19()
    assert classes.num_classes == 19
    assert list(classes.names) == [trainId2label[i].name for i in range(19)]
    assert classes.names[0] == "road" and classes.names[-1] == "bicycle"
    assert list(classes.colors) == [tuple(trainId2label[i].color) for i in range(19)]
    assert list(classes.label_ids) == [trainId2label[i].id for i in range(19)]
    ids = np.arange(34, dtype=np.uint8)
    expected = [_official_train_id(i) for i in range(34)]
    assert classes.encode(ids).tolist() == expected
    assert all(expected[i] == IGNORE_INDEX for i in range(7))  # 0..6 are all ignoreInEval
    assert sorted(v for v in expected if v != IGNORE_INDEX) == list(range(19))


@pytest.mark.parametrize("value", [34, 100, 254, 255])
def test_cityscapes19_rejects_values_above_33(value: int) -> None:
    mask = np.array([[7, 8], [value, 26]], dtype=np.uint8)
    with pytest.raises(ValueError, match=rf"\[{value}\]"):
        cityscapes19().encode(mask)


def test_cityscapes19_matches_shipped_train_ids(shared_data: Path) -> None:
    root = shared_data / "cityscapes_sample"
    if not root.is_dir():
        pytest.skip("cityscapes_sample not present")
    label_ids = np.asarray(Image.open(root / f"{SAMPLE_STEM}_labelIds.png"))
    shipped = np.asarray(Image.open(root / f"{SAMPLE_STEM}_labelTrainIds.png"))
    encoded = cityscapes19().encode(label_ids)
    agreement = float((encoded == shipped).mean())
    print(f"cityscapes_sample labelIds -> trainIds agreement: {100 * agreement:.3f}%")
    assert encoded.shape == (128, 256)
    assert agreement >= 0.995


def test_cityscapes24_extends_the_19() -> None:
    classes = cityscapes24()
    base = cityscapes19()
    assert classes.num_classes == 24
    assert classes.names[:19] == base.names
    assert classes.names[19:] == ("dynamic", "ground", "parking", "bridge", "void")
    lut = classes.lut
    assert lut[[0, 1, 2, 3, 4]].tolist() == [23] * 5
    assert [lut[name2label[n].id] for n in ("dynamic", "ground", "parking", "bridge")] == [
        19,
        20,
        21,
        22,
    ]
    assert lut[name2label["road"].id] == 0 and lut[name2label["bicycle"].id] == 18
    rare = ("rail track", "guard rail", "tunnel", "caravan", "trailer")
    assert sorted(classes.rare_values) == sorted(name2label[n].id for n in rare)
    assert all(lut[v] == IGNORE_INDEX for v in classes.rare_values)


def _write_cityscapes_pair(root: Path, stem: str, label_ids: np.ndarray) -> None:
    image_dir = root / "leftImg8bit" / "train" / "town"
    mask_dir = root / "gtFine" / "train" / "town"
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 256, (*label_ids.shape, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(image_dir / f"{stem}_leftImg8bit.png")
    Image.fromarray(label_ids).save(mask_dir / f"{stem}_gtFine_labelIds.png")


def test_prepare_split_drops_images_with_rare_classes(tmp_path: Path) -> None:
    plain = np.full((16, 32), name2label["road"].id, dtype=np.uint8)
    plain[:6] = name2label["sky"].id
    rare = plain.copy()
    rare[10:14, 4:9] = name2label["guard rail"].id
    _write_cityscapes_pair(tmp_path / "data", "town_000000_000001", rare)
    _write_cityscapes_pair(tmp_path / "data", "town_000000_000002", plain)
    samples = find_cityscapes(tmp_path / "data", "train")
    assert len(samples) == 2 and all(s.mask is not None for s in samples)

    kept = prepare_split(
        samples, cityscapes24(), (32, 16), tmp_path / "cache", "train", True, progress=False
    )
    assert len(kept) == 1
    assert kept.sources == [str(samples[1].image)]
    assert kept.index["dropped"] == 1
    assert np.array_equal(np.asarray(kept.masks[0]), cityscapes24().encode(plain))

    everything = prepare_split(
        samples, cityscapes24(), (32, 16), tmp_path / "cache", "train", False, progress=False
    )
    assert len(everything) == 2


def test_camvid11() -> None:
    classes = camvid11()
    assert classes.names == (
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
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert classes.encode(mask).ravel().tolist() == [*range(11), IGNORE_INDEX]
    with pytest.raises(ValueError, match=r"\[40\]"):
        classes.encode(np.array([[0, 40]], dtype=np.uint8))


CUSTOM_TABLE = """\
name: tiny
ignore_values: [0]
classes:
  - {name: ground, color: [10, 20, 30], values: [1, 2]}
  - {name: object, color: [200, 0, 0], values: [7]}
"""


def test_custom_yaml_table(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(CUSTOM_TABLE)
    classes = load_class_set(str(path))
    assert classes.name == "tiny"
    assert classes.names == ("ground", "object")
    assert classes.colors == ((10, 20, 30), (200, 0, 0))
    mask = np.array([[0, 1, 2, 7]], dtype=np.uint8)
    assert classes.encode(mask).tolist() == [[IGNORE_INDEX, 0, 0, 1]]
    with pytest.raises(ValueError, match=r"\[3\]"):
        classes.encode(np.array([[3]], dtype=np.uint8))


@pytest.mark.parametrize(
    "text",
    [
        "name: broken\nclasses: [{name: a, color: [1, 2, 3]}\n",  # YAML syntax
        "name: broken\n",  # no classes
        "classes:\n  - {name: a, color: [1, 2]}\n",  # two colour values
        "classes:\n  - {name: a, color: [1, 2, 3], values: [300]}\n",  # not 8-bit
        "classes:\n  - {name: a, color: [1, 2, 3], values: [1]}\n"
        "  - {name: b, color: [4, 5, 6], values: [1]}\n",  # value used twice
        "classes: []\n",
    ],
)
def test_malformed_yaml_table_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken_table.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="broken_table.yaml"):
        load_class_set(str(path))


@pytest.mark.parametrize("text", ["", "just a string\n", "[1, 2]\n"])
def test_non_mapping_yaml_table_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken_table.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="broken_table.yaml"):
        load_class_set(str(path))


def test_unknown_class_set_name() -> None:
    with pytest.raises(ValueError, match="cityscapes19"):
        load_class_set("cityscapes20")


@pytest.mark.parametrize("factory", [cityscapes19, cityscapes24, camvid11])
def test_class_set_dict_round_trip(factory) -> None:
    classes = factory()
    restored = ClassSet.from_dict(json.loads(json.dumps(classes.to_dict())))
    assert restored == classes
    assert restored.lut.tolist() == classes.lut.tolist()


def test_custom_class_set_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(CUSTOM_TABLE)
    classes = load_class_set(str(path))
    assert ClassSet.from_dict(json.loads(json.dumps(classes.to_dict()))) == classes


def test_shipped_label_ids_are_within_the_table(shared_data: Path) -> None:
    root = shared_data / "cityscapes_sample"
    if not root.is_dir():
        pytest.skip("cityscapes_sample not present")
    samples = find_cityscapes(root, "val")
    assert len(samples) == 1
    values = read_mask_values(samples[0])
    assert values.max() <= 33
    cityscapes24().encode(values)  # every official id is known to the 24-class set too
