"""Class sets: which source mask values become which training ids, with names and colours.

A class set maps every 8-bit value a mask file may hold to a training id in ``[0, C)`` or to
``IGNORE_INDEX``; a value outside the table is invalid and reported, never guessed. The Cityscapes
sets are built from the official label table of ``cityscapesscripts``, not from a hand copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from cityscapesscripts.helpers.labels import name2label

IGNORE_INDEX = 255
INVALID = -1  # lookup value of a mask value that the class table does not know

# The original project's 24 classes: the 19 evaluation classes, four more, and one merged void.
CITYSCAPES24_EXTRA = ("dynamic", "ground", "parking", "bridge")
CITYSCAPES24_VOID = ("unlabeled", "ego vehicle", "rectification border", "out of roi", "static")
# The original dropped every image containing one of these (too rare to learn).
CITYSCAPES24_RARE = ("rail track", "guard rail", "tunnel", "caravan", "trailer")

CAMVID11 = (
    ("Sky", (128, 128, 128)),
    ("Building", (128, 0, 0)),
    ("Pole", (192, 192, 128)),
    ("Road", (128, 64, 128)),
    ("Pavement", (60, 40, 222)),
    ("Tree", (128, 128, 0)),
    ("SignSymbol", (192, 128, 128)),
    ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)),
    ("Pedestrian", (64, 64, 0)),
    ("Bicyclist", (0, 128, 192)),
)
CAMVID_VOID = 11


@dataclass(frozen=True)
class ClassSet:
    """A class table: names and colours per training id, and the source-value lookup."""

    name: str
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    lookup: tuple[int, ...]  # 256 entries: source value -> train id, IGNORE_INDEX or INVALID
    # Cityscapes label id written for each train id by `predict` (None: write train ids).
    label_ids: tuple[int, ...] | None = None
    rare_values: tuple[int, ...] = ()  # source values whose images may be dropped

    def __post_init__(self) -> None:
        """ValueError for a table the pipeline could not use to the end (a run that trains but
        cannot then be evaluated or resumed)."""
        if len(set(self.names)) != len(self.names):
            twice = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"class names must be distinct, {twice} appear more than once")
        if len(self.colors) != len(self.names):
            raise ValueError(f"{len(self.names)} class names but {len(self.colors)} colours")
        for name, color in zip(self.names, self.colors):
            if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
                raise ValueError(
                    f"class {name!r}: colour {list(color)} is not three integers 0..255"
                )
        if len(self.lookup) != 256:
            raise ValueError(f"the value lookup needs 256 entries, not {len(self.lookup)}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def lut(self) -> np.ndarray:
        """The lookup as an int16 array, for vectorised mapping."""
        return np.asarray(self.lookup, dtype=np.int16)

    def encode(self, source: np.ndarray) -> np.ndarray:
        """Map a source mask (uint8 values) to train ids (uint8, IGNORE_INDEX for ignored).

        Raises ValueError listing the values the table does not know.
        """
        mapped = self.lut[source]
        bad = np.unique(source[mapped == INVALID])
        if bad.size:
            raise ValueError(f"mask values {bad.tolist()} are not in class set {self.name!r}")
        return mapped.astype(np.uint8)

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 colours by train id; ignored and unused ids are black."""
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[: self.num_classes] = np.asarray(self.colors, dtype=np.uint8)
        return palette

    def to_dict(self) -> dict[str, Any]:
        """JSON/checkpoint-ready form (plain lists and strings)."""
        return {
            "name": self.name,
            "names": list(self.names),
            "colors": [list(c) for c in self.colors],
            "lookup": list(self.lookup),
            "label_ids": list(self.label_ids) if self.label_ids is not None else None,
            "rare_values": list(self.rare_values),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassSet:
        """Inverse of ``to_dict``."""
        label_ids = data.get("label_ids")
        return cls(
            name=data["name"],
            names=tuple(data["names"]),
            colors=tuple(tuple(c) for c in data["colors"]),
            lookup=tuple(data["lookup"]),
            label_ids=tuple(label_ids) if label_ids is not None else None,
            rare_values=tuple(data.get("rare_values", ())),
        )


def cityscapes19() -> ClassSet:
    """The 19 official evaluation classes: labelId -> trainId, ignoreInEval -> 255."""
    train_labels = sorted(
        (label for label in CITYSCAPES_LABELS if not label.ignoreInEval and label.id >= 0),
        key=lambda label: label.trainId,
    )
    lookup = [INVALID] * 256
    for label in CITYSCAPES_LABELS:
        if label.id >= 0:
            lookup[label.id] = IGNORE_INDEX if label.ignoreInEval else label.trainId
    return ClassSet(
        name="cityscapes19",
        names=tuple(label.name for label in train_labels),
        colors=tuple(tuple(label.color) for label in train_labels),
        lookup=tuple(lookup),
        label_ids=tuple(label.id for label in train_labels),
    )


def cityscapes_categories(class_set: ClassSet) -> tuple[str, ...] | None:
    """The official Cityscapes category (flat, construction, ...) of each class, from its label
    id; None for a table without label ids or with a class outside the evaluated categories."""
    if class_set.label_ids is None:
        return None
    by_id = {label.id: label for label in CITYSCAPES_LABELS}
    labels = [by_id.get(label_id) for label_id in class_set.label_ids]
    if any(label is None or label.ignoreInEval for label in labels):
        return None
    return tuple(label.category for label in labels)  # type: ignore[union-attr]


def cityscapes24() -> ClassSet:
    """The original project's 24 classes: the 19, dynamic, ground, parking, bridge and void."""
    base = cityscapes19()
    extra = [name2label[name] for name in CITYSCAPES24_EXTRA]
    lookup = list(base.lookup)
    for offset, label in enumerate(extra):
        lookup[label.id] = base.num_classes + offset
    void_id = base.num_classes + len(extra)
    for name in CITYSCAPES24_VOID:
        lookup[name2label[name].id] = void_id
    return ClassSet(
        name="cityscapes24",
        names=base.names + tuple(label.name for label in extra) + ("void",),
        colors=base.colors + tuple(tuple(label.color) for label in extra) + ((0, 0, 0),),
        lookup=tuple(lookup),
        label_ids=base.label_ids + tuple(label.id for label in extra) + (0,),
        rare_values=tuple(name2label[name].id for name in CITYSCAPES24_RARE),
    )


def camvid11() -> ClassSet:
    """CamVid's 11 classes (SegNet version); index 11 (Unlabelled) is ignored."""
    lookup = [INVALID] * 256
    for index in range(len(CAMVID11)):
        lookup[index] = index
    lookup[CAMVID_VOID] = IGNORE_INDEX
    return ClassSet(
        name="camvid11",
        names=tuple(name for name, _ in CAMVID11),
        colors=tuple(color for _, color in CAMVID11),
        lookup=tuple(lookup),
    )


BUILTIN = {"cityscapes19": cityscapes19, "cityscapes24": cityscapes24, "camvid11": camvid11}


def load_class_set(name_or_path: str) -> ClassSet:
    """A built-in class set by name, or a custom one from a YAML table.

    The YAML holds ``name``, optional ``ignore_values`` and ``classes``: a list of
    ``{name, color: [r, g, b], values: [source values]}``; list order gives the train ids.
    """
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]()
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"class set {name_or_path!r}: neither one of {', '.join(BUILTIN)} nor a YAML file"
        )
    try:
        table = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(table, dict):
            raise ValueError("expected a mapping with a 'classes' list")
        return _class_set_from_table(table, default_name=path.stem)
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: invalid class table: {error}") from None


def _class_set_from_table(table: dict[str, Any], default_name: str) -> ClassSet:
    lookup = [INVALID] * 256
    for value in table.get("ignore_values", []):
        lookup[_source_value(value)] = IGNORE_INDEX
    names, colors = [], []
    for train_id, entry in enumerate(table["classes"]):
        names.append(str(entry["name"]))
        colors.append(tuple(entry["color"]))
        for value in entry.get("values", [train_id]):
            if lookup[_source_value(value)] != INVALID:
                raise ValueError(f"source value {value} appears twice")
            lookup[_source_value(value)] = train_id
    if not names or len(names) >= IGNORE_INDEX:
        raise ValueError(f"needs 1 to {IGNORE_INDEX - 1} classes")
    return ClassSet(
        name=str(table.get("name", default_name)),
        names=tuple(names),
        colors=tuple(colors),
        lookup=tuple(lookup),
    )


def _source_value(value: Any) -> int:
    if not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError(f"source value {value!r} is not an integer in 0..255")
    return value


def cityscapes_color_to_label_id() -> dict[tuple[int, int, int], int]:
    """Colour of ``*_gtFine_color.png`` -> label id; the first label of a shared colour wins."""
    mapping: dict[tuple[int, int, int], int] = {}
    for label in CITYSCAPES_LABELS:
        if label.id >= 0:
            mapping.setdefault(tuple(label.color), label.id)
    return mapping
