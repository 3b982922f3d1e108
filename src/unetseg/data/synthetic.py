"""Procedural synthetic street scenes written in the official Cityscapes layout.

This is the project's embedded demo data set. A scene is a pinhole-camera view of a straight
street: every object is placed in metres on the ground plane and projected, so sizes follow
perspective. Image, label and a shading layer are drawn in lock-step, back to front, so
occlusion is identical in image and label. Colours of different classes come from overlapping
distributions; classes differ by shape, texture and context, as in real street scenes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import name2label
from PIL import Image, ImageDraw

from unetseg.core.config import ConfigError
from unetseg.core.files import atomic_path, write_json
from unetseg.core.parallel import parallel_map

CITIES: tuple[str, ...] = ("synthburg", "pixelton", "rendervik")
SPLITS: tuple[str, ...] = ("train", "val")
COMPLETE_MARKER = "synthetic.json"

EGO = name2label["ego vehicle"].id
ROAD = name2label["road"].id
SIDEWALK = name2label["sidewalk"].id
BUILDING = name2label["building"].id
POLE = name2label["pole"].id
LIGHT = name2label["traffic light"].id
SIGN = name2label["traffic sign"].id
VEGETATION = name2label["vegetation"].id
TERRAIN = name2label["terrain"].id
SKY = name2label["sky"].id
PERSON = name2label["person"].id
CAR = name2label["car"].id

# Texture amplitudes per class: fine grain, blotches, large stains, bricks.
_TEXTURE: dict[int, tuple[float, float, float, float]] = {
    ROAD: (0.07, 0.02, 0.08, 0.0),
    SIDEWALK: (0.05, 0.02, 0.06, 0.0),
    BUILDING: (0.03, 0.03, 0.10, 0.14),
    POLE: (0.03, 0.0, 0.05, 0.0),
    LIGHT: (0.02, 0.0, 0.0, 0.0),
    SIGN: (0.02, 0.0, 0.03, 0.0),
    VEGETATION: (0.12, 0.30, 0.08, 0.0),
    TERRAIN: (0.10, 0.10, 0.12, 0.0),
    SKY: (0.0, 0.0, 0.04, 0.0),
    PERSON: (0.04, 0.04, 0.0, 0.0),
    CAR: (0.02, 0.0, 0.05, 0.0),
    EGO: (0.01, 0.0, 0.05, 0.0),
}
# Besides greys, which every surface class draws from.
_BUILDING_TINTS = (
    (205, 185, 150),
    (160, 85, 65),
    (215, 200, 170),
    (180, 150, 120),
    (140, 150, 160),
)
_VEHICLE_TINTS = ((150, 30, 30), (30, 50, 120), (40, 80, 50), (190, 170, 140), (90, 110, 130))
_Z_FAR = 2000.0  # depth used as "at the horizon"
# Poles, signs, lights and persons stand nearer than this, so that they span several pixels even
# at 256x128, where the demo trains: a learnable data set, not a test of sub-pixel detection.
_Z_SMALL = 12.0
_PNG_OPTIONS = {"format": "PNG", "compress_level": 1}

Colour = tuple[int, int, int]
Pt = tuple[float, float]


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera looking along the road; X right, Y up, Z forward, in metres."""

    width: int
    height: int
    focal: float
    cam_h: float
    vx: float
    hy: float

    def pt(self, x: float, y: float, z: float) -> Pt:
        s = self.focal / z
        return (self.vx + s * x, self.hy + s * (self.cam_h - y))

    def scale(self, z: float) -> float:
        return self.focal / z

    def ground_z(self, row: float) -> float:
        """Depth of the ground seen at image row `row` (below the horizon)."""
        return self.focal * self.cam_h / (row - self.hy)

    def visible_z(self, x: float, bottom: float) -> float:
        """Nearest depth at which a ground point at lateral `x` is inside the image above `bottom`."""
        room = self.vx - 1 if x < 0 else self.width - self.vx - 1
        return max(self.ground_z(bottom), self.focal * abs(x) / room)

    def ground_quad(self, x0: float, x1: float, z0: float, z1: float) -> list[Pt]:
        return [self.pt(x0, 0, z0), self.pt(x1, 0, z0), self.pt(x1, 0, z1), self.pt(x0, 0, z1)]

    def side_quad(self, x: float, z0: float, z1: float, y0: float, y1: float) -> list[Pt]:
        """Vertical quad in the plane X = x (parallel to the road)."""
        return [self.pt(x, y0, z0), self.pt(x, y1, z0), self.pt(x, y1, z1), self.pt(x, y0, z1)]

    def front_quad(self, x0: float, x1: float, y0: float, y1: float, z: float) -> list[Pt]:
        """Vertical quad in the plane Z = z (facing the camera)."""
        return [self.pt(x0, y0, z), self.pt(x1, y0, z), self.pt(x1, y1, z), self.pt(x0, y1, z)]


class _Canvas:
    """RGB image, label map and shading layer, drawn with identical shapes."""

    def __init__(self, sky: np.ndarray) -> None:
        height, width = sky.shape[:2]
        self.rgb = Image.fromarray(sky)
        self.label = Image.new("L", (width, height), SKY)
        self.shade = Image.new("L", (width, height), 255)
        self._rgb = ImageDraw.Draw(self.rgb)
        self._label = ImageDraw.Draw(self.label)
        self._shade = ImageDraw.Draw(self.shade)

    def poly(self, pts: Sequence[Pt], colour: Colour, label: int) -> None:
        self._rgb.polygon(pts, fill=colour)
        self._label.polygon(pts, fill=label)
        self._shade.polygon(pts, fill=255)

    def ellipse(self, box: Sequence[float], colour: Colour, label: int) -> None:
        box = _ordered(box)
        self._rgb.ellipse(box, fill=colour)
        self._label.ellipse(box, fill=label)
        self._shade.ellipse(box, fill=255)

    def rect(self, box: Sequence[float], colour: Colour, label: int) -> None:
        box = _ordered(box)
        self._rgb.rectangle(box, fill=colour)
        self._label.rectangle(box, fill=label)
        self._shade.rectangle(box, fill=255)

    def paint(self, pts: Sequence[Pt], colour: Colour) -> None:
        """Surface detail (windows, markings): changes the image only, never the label."""
        self._rgb.polygon(pts, fill=colour)

    def paint_ellipse(self, box: Sequence[float], colour: Colour) -> None:
        self._rgb.ellipse(_ordered(box), fill=colour)

    def paint_line(self, pts: Sequence[Pt], colour: Colour, width: int = 1) -> None:
        self._rgb.line(pts, fill=colour, width=width)

    def shadow(self, pts: Sequence[Pt], level: int) -> None:
        self._shade.polygon(pts, fill=level)

    def shadow_ellipse(self, box: Sequence[float], level: int) -> None:
        self._shade.ellipse(_ordered(box), fill=level)


@dataclass
class _Ctx:
    cv: _Canvas
    cam: _Camera
    rng: np.random.Generator
    sun: float  # shadow darkness in [0, 1]; 0 on overcast days


@dataclass(frozen=True)
class _Side:
    sign: int  # -1 left, +1 right of the camera
    kerb: float  # |X| of the road edge
    walk: float  # |X| of the sidewalk's outer edge (the building line)
    lawn: float  # width of the grass strip next to the kerb, 0 for none
    park: bool  # open grass and trees instead of buildings
    parking: bool  # a parking lane along this kerb


@dataclass(frozen=True)
class _Facade:
    x: float  # signed X of the wall facing the road
    line: float  # signed X of the building line (sidewalk's outer edge)
    z0: float
    z1: float
    height: float
    colour: Colour
    garden: bool  # grass and a hedge between sidewalk and facade


# ---------------------------------------------------------------- colours


def _rgb(values: Sequence[float] | np.ndarray) -> Colour:
    r, g, b = np.clip(np.asarray(values, dtype=np.float64), 0, 255).astype(int)
    return (int(r), int(g), int(b))


def _grey(rng: np.random.Generator, lo: float, hi: float, tint: float = 8) -> Colour:
    return _rgb(rng.uniform(lo, hi) + rng.uniform(-tint, tint, 3))


def _scaled(colour: Colour, k: float) -> Colour:
    return _rgb(np.asarray(colour) * k)


def _jitter(rng: np.random.Generator, base: Sequence[float], spread: float = 0.15) -> Colour:
    """Base colour with random brightness and a small random tint."""
    k = rng.uniform(1 - spread, 1 + spread)
    return _rgb(np.asarray(base, dtype=np.float64) * k * rng.uniform(0.93, 1.07, 3))


def _pick(rng: np.random.Generator, options: Sequence[Sequence[float]]) -> Sequence[float]:
    return options[int(rng.integers(len(options)))]


def _building_colour(rng: np.random.Generator) -> Colour:
    if rng.random() < 0.45:
        return _grey(rng, 70, 215)
    return _jitter(rng, _pick(rng, _BUILDING_TINTS), 0.25)


def _green(rng: np.random.Generator) -> Colour:
    if rng.random() < 0.15:  # autumn or dry
        return _jitter(rng, (130, 120, 50), 0.3)
    return _jitter(rng, (60, 105, 45), 0.35)


def _vehicle_colour(rng: np.random.Generator) -> Colour:
    if rng.random() < 0.55:
        return _grey(rng, 25, 225, 5)
    return _jitter(rng, _pick(rng, _VEHICLE_TINTS), 0.3)


def _ordered(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = box
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


# ---------------------------------------------------------------- scene layout


def _sample_camera(rng: np.random.Generator, width: int, height: int) -> _Camera:
    return _Camera(
        width=width,
        height=height,
        focal=width * rng.uniform(0.9, 1.2),
        cam_h=rng.uniform(1.3, 1.7),
        vx=width * rng.uniform(0.38, 0.62),
        hy=height * rng.uniform(0.36, 0.5),
    )


def _sample_road(rng: np.random.Generator) -> list[float]:
    """X of the lane boundaries, left to right; the camera drives in one of the lanes."""
    lanes = int(rng.integers(2, 5))
    width = rng.uniform(2.8, 3.6)
    left = -(int(rng.integers(lanes)) + 0.5) * width + rng.uniform(-0.4, 0.4)
    return [left + k * width for k in range(lanes + 1)]


def _sample_side(rng: np.random.Generator, sign: int, edge: float) -> _Side:
    parking = bool(rng.random() < 0.5)
    kerb = abs(edge) + (2.2 if parking else 0.0)
    lawn = rng.uniform(1.0, 2.5) if rng.random() < 0.4 else 0.0
    walk = kerb + 0.2 + lawn + rng.uniform(2.0, 5.0)
    return _Side(sign, kerb, walk, lawn, park=bool(rng.random() < 0.2), parking=parking)


def _sample_facades(
    rng: np.random.Generator, side: _Side, z_start: float, z_end: float
) -> list[_Facade]:
    """A gapless row of facades from out of view to the backdrop at `z_end`."""
    facades, z = [], z_start
    while z < z_end:
        length = min(rng.uniform(8, 30), z_end - z)
        setback = rng.uniform(0, 2.5)
        facades.append(
            _Facade(
                x=side.sign * (side.walk + setback),
                line=side.sign * side.walk,
                z0=z,
                z1=z + length,
                height=rng.uniform(7, 25),
                colour=_building_colour(rng),
                garden=bool(setback > 1.5 and rng.random() < 0.35),
            )
        )
        z += length
    return facades


# ---------------------------------------------------------------- sky and ground


def _sky(rng: np.random.Generator, width: int, height: int, hy: float) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # clear
        top = rng.uniform((40, 100, 180), (90, 150, 240))
        low = rng.uniform((150, 180, 215), (210, 225, 250))
    elif kind == 1:  # overcast
        top = rng.uniform(150, 220) + rng.uniform(-6, 6, 3)
        low = rng.uniform(170, 235) + rng.uniform(-6, 6, 3)
    else:  # warm evening
        top = rng.uniform((90, 110, 160), (150, 160, 210))
        low = rng.uniform((200, 170, 140), (250, 210, 190))
    t = np.clip(np.arange(height, dtype=np.float32) / max(hy, 1.0), 0, 1)[:, None, None]
    column = (1 - t) * top.astype(np.float32) + t * low.astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(column, (height, width, 3)).astype(np.uint8))


def _draw_clouds(ctx: _Ctx) -> None:
    cam, rng = ctx.cam, ctx.rng
    unit = cam.height / 20
    for _ in range(int(rng.integers(0, 6))):
        cx, cy = rng.uniform(0, cam.width), rng.uniform(0, cam.hy * 0.6)
        colour = _grey(rng, 200, 250, 4)
        for _ in range(int(rng.integers(3, 7))):
            x, y = cx + rng.normal(0, 2 * unit), cy + rng.normal(0, 0.5 * unit)
            rx, ry = rng.uniform(1, 3) * unit, rng.uniform(0.4, 1) * unit
            ctx.cv.ellipse((x - rx, y - ry, x + rx, y + ry), _jitter(rng, colour, 0.05), SKY)


def _draw_ground(
    ctx: _Ctx, bounds: list[float], sides: list[_Side], facades: list[_Facade]
) -> None:
    cam, rng, cv = ctx.cam, ctx.rng, ctx.cv
    z0 = cam.ground_z(cam.height) * 0.6
    cv.rect((0, int(cam.hy), cam.width, cam.height), _green(rng), TERRAIN)
    walk = _grey(rng, 85, 195) if rng.random() < 0.75 else _jitter(rng, (160, 110, 95))
    for side in sides:
        _draw_sidewalk(ctx, side, walk, z0)
    for f in facades:
        if f.garden:
            cv.poly(cam.ground_quad(f.line, f.x, f.z0, f.z1), _green(rng), TERRAIN)
    left, right = -sides[0].kerb, sides[1].kerb
    cv.poly(cam.ground_quad(left, right, z0, _Z_FAR), _grey(rng, 55, 150), ROAD)
    _draw_patches(ctx, left, right)
    _draw_markings(ctx, bounds, z0)


def _draw_sidewalk(ctx: _Ctx, side: _Side, colour: Colour, z0: float) -> None:
    """Sidewalk with kerb stones and an optional grass strip; under buildings it runs on."""
    cam, rng, cv, s = ctx.cam, ctx.rng, ctx.cv, side.sign
    outer = side.walk if side.park else side.walk + 4
    cv.poly(cam.ground_quad(s * side.kerb, s * outer, z0, _Z_FAR), colour, SIDEWALK)
    kerb = _scaled(colour, rng.uniform(0.7, 1.3))
    cv.poly(cam.ground_quad(s * side.kerb, s * (side.kerb + 0.2), z0, _Z_FAR), kerb, SIDEWALK)
    inner = side.kerb + 0.2
    if side.lawn:
        cv.poly(
            cam.ground_quad(s * inner, s * (inner + side.lawn), z0, _Z_FAR), _green(rng), TERRAIN
        )
    # Paving-slab joints across the sidewalk.
    dark, step = _scaled(colour, 0.75), rng.uniform(1.5, 3.0)
    for z in np.arange(z0, 60.0, step):
        if cam.scale(z) * step < 3:
            break
        cv.paint_line([cam.pt(s * (inner + side.lawn), 0, z), cam.pt(s * side.walk, 0, z)], dark)


def _draw_patches(ctx: _Ctx, left: float, right: float) -> None:
    """Repaired asphalt: same label, different colour."""
    rng = ctx.rng
    for _ in range(int(rng.integers(0, 4))):
        x, z = rng.uniform(left, right - 1), rng.uniform(6, 60)
        quad = ctx.cam.ground_quad(x, x + rng.uniform(1, 4), z, z + rng.uniform(2, 10))
        ctx.cv.paint(quad, _grey(rng, 40, 140, 4))


def _draw_markings(ctx: _Ctx, bounds: list[float], z0: float) -> None:
    """Dashed lane lines, optional edge lines and zebra crossing (all road label)."""
    cam, rng, cv = ctx.cam, ctx.rng, ctx.cv
    paint = _grey(rng, 170, 245, 5)
    half = rng.uniform(0.06, 0.09)
    dash, gap = rng.uniform(2, 4), rng.uniform(4, 8)
    start = z0 + rng.uniform(0, dash + gap)
    for x in bounds[1:-1]:
        for z in np.arange(start, 150.0, dash + gap):
            cv.paint(cam.ground_quad(x - half, x + half, z, z + dash), paint)
    if rng.random() < 0.6:
        for x in (bounds[0] + 0.3, bounds[-1] - 0.3):
            cv.paint(cam.ground_quad(x - half, x + half, z0, _Z_FAR), paint)
    if rng.random() < 0.3:
        z = rng.uniform(10, 35)
        for x in np.arange(bounds[0] + 0.3, bounds[-1] - 0.3, 1.0):
            cv.paint(cam.ground_quad(x, x + 0.5, z, z + 3.0), paint)


def _draw_backdrop(ctx: _Ctx, z: float) -> None:
    """Far-away buildings and tree lines across the view at depth `z`, hiding what lies beyond."""
    cam, rng = ctx.cam, ctx.rng
    x = -cam.vx * z / cam.focal - 10
    x_end = (cam.width - cam.vx) * z / cam.focal + 10
    while x < x_end:
        w = rng.uniform(8, 30)
        if rng.random() < 0.6:
            quad = cam.front_quad(x, x + w, 0, rng.uniform(5, 30), z)
            ctx.cv.poly(quad, _building_colour(rng), BUILDING)
        else:
            (x0, y0), (x1, y1) = cam.pt(x, 0, z), cam.pt(x + w, rng.uniform(6, 15), z)
            ctx.cv.ellipse((x0, y0 + 0.1 * (y0 - y1), x1, y1), _green(rng), VEGETATION)
        x += w


# ---------------------------------------------------------------- buildings


def _draw_facade(ctx: _Ctx, f: _Facade, nearer: _Facade | None) -> None:
    cam, cv = ctx.cam, ctx.cv
    if nearer is not None and abs(f.x) < abs(nearer.x):
        # A building standing closer to the road than its nearer neighbour shows its end wall.
        cv.poly(cam.front_quad(f.x, nearer.x, 0, f.height, f.z0), _scaled(f.colour, 0.75), BUILDING)
    cv.poly(cam.side_quad(f.x, f.z0, f.z1, 0, f.height), f.colour, BUILDING)
    cv.paint(cam.side_quad(f.x, f.z0, f.z1, f.height - 0.5, f.height), _scaled(f.colour, 0.8))
    _draw_windows(ctx, f)
    if f.garden:
        _draw_barrier(ctx, f.line, f.z0, f.z1)


def _draw_windows(ctx: _Ctx, f: _Facade) -> None:
    cam, rng = ctx.cam, ctx.rng
    floor_h, ground_h = rng.uniform(2.8, 3.5), rng.uniform(3.0, 4.5)
    step = rng.uniform(2.2, 4.0)
    win_w, win_h = step * rng.uniform(0.35, 0.6), floor_h * rng.uniform(0.4, 0.6)
    glass = _jitter(rng, (50, 60, 75), 0.4)
    shop = rng.random() < 0.5
    floors = np.arange(ground_h + 0.9, f.height - win_h - 0.5, floor_h)
    for z in np.arange(f.z0 + 0.8, f.z1 - win_w - 0.5, step):
        (xa, _), (xb, _) = cam.pt(f.x, 0, z), cam.pt(f.x, 0, z + win_w)
        if abs(xb - xa) < 1.5:
            break  # windows only get smaller further away
        if max(xa, xb) < 0 or min(xa, xb) > cam.width:
            continue
        for y in floors:
            pane = glass if rng.random() > 0.08 else _jitter(rng, (200, 180, 110))
            ctx.cv.paint(cam.side_quad(f.x, z, z + win_w, y, y + win_h), pane)
        if shop:
            ctx.cv.paint(cam.side_quad(f.x, z - 0.3, z + win_w + 0.3, 0.4, ground_h - 0.6), glass)


def _draw_barrier(ctx: _Ctx, x: float, z0: float, z1: float) -> None:
    """A hedge on the building line `x` (signed), facing the road."""
    cam, rng, cv = ctx.cam, ctx.rng, ctx.cv
    back = x + np.sign(x) * rng.uniform(0.4, 0.9)  # far side, for the visible top face
    h, colour = rng.uniform(0.8, 1.6), _green(rng)
    top = [cam.pt(x, h, z0), cam.pt(back, h, z0), cam.pt(back, h, z1), cam.pt(x, h, z1)]
    cv.poly(top, _scaled(colour, 1.15), VEGETATION)
    cv.poly(cam.side_quad(x, z0, z1, 0, h), colour, VEGETATION)


def _draw_building_shadows(ctx: _Ctx, facades: list[_Facade], sun_side: int) -> None:
    """Buildings on the sun's side shade the ground in front of the building line."""
    level = int(255 * (1 - ctx.sun))
    reach = ctx.rng.uniform(0.2, 0.7)
    for f in facades:
        if np.sign(f.x) == sun_side:
            inner = f.line - sun_side * f.height * reach
            ctx.cv.shadow(ctx.cam.ground_quad(f.line, inner, f.z0 + 2, f.z1 + 2), level)


# ---------------------------------------------------------------- poles, signs, lights

_SIGN_COLOURS = (
    ((200, 30, 35), (235, 235, 230)),
    ((30, 70, 170), (45, 95, 195)),
    ((235, 235, 230), (230, 180, 20)),
    ((30, 120, 60), (235, 235, 230)),
    ((30, 70, 170), (235, 235, 230)),
)
_LAMPS = ((255, 40, 30), (255, 170, 0), (40, 255, 120))


def _min_px(cam: _Camera) -> float:
    """Thinnest drawn pole: about 1.5 px at 256 px image width."""
    return cam.width / 170


def _vbar(
    ctx: _Ctx, x: float, z: float, y0: float, y1: float, width: float, colour: Colour
) -> None:
    """Vertical pole segment, never thinner than _min_px."""
    cam = ctx.cam
    half = max(width * cam.scale(z), _min_px(cam)) / 2
    (px, bottom), (_, top) = cam.pt(x, y0, z), cam.pt(x, y1, z)
    ctx.cv.rect((px - half, top, px + half, bottom), colour, POLE)


def _hbar(ctx: _Ctx, x0: float, x1: float, y: float, z: float, colour: Colour) -> None:
    """Horizontal arm of a pole."""
    cam = ctx.cam
    half = max(0.12 * cam.scale(z), _min_px(cam)) / 2
    (xa, py), (xb, _) = cam.pt(x0, y, z), cam.pt(x1, y, z)
    ctx.cv.rect((xa, py - half, xb, py + half), colour, POLE)


def _pole_colour(rng: np.random.Generator) -> Colour:
    return _grey(rng, 50, 170) if rng.random() < 0.8 else _jitter(rng, (40, 70, 50))


def _shape(kind: int, cx: float, cy: float, r: float, aspect: float) -> list[Pt]:
    """Sign outline: triangle up, triangle down, rectangle or diamond."""
    if kind == 0:
        return [(cx, cy - r), (cx + r, cy + 0.75 * r), (cx - r, cy + 0.75 * r)]
    if kind == 1:
        return [(cx, cy + r), (cx + r, cy - 0.75 * r), (cx - r, cy - 0.75 * r)]
    if kind == 2:
        w = r * aspect
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy + r), (cx - w, cy + r)]
    return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]


def _draw_sign(ctx: _Ctx, x: float, z: float, y: float, size: float) -> None:
    """Round, triangular, rectangular or diamond plate centred at height y."""
    cam, rng, cv = ctx.cam, ctx.rng, ctx.cv
    (cx, cy), r = cam.pt(x, y, z), max(size * cam.scale(z) / 2, 1.5)
    rim, face = (_jitter(rng, c, 0.15) for c in _pick(rng, _SIGN_COLOURS))
    if rng.random() < 0.2:  # seen from behind: bare metal
        rim = face = _grey(rng, 100, 180)
    kind, aspect = int(rng.integers(5)), rng.uniform(0.8, 1.6)
    if kind == 4:
        cv.ellipse((cx - r, cy - r, cx + r, cy + r), rim, SIGN)
        cv.paint_ellipse((cx - 0.7 * r, cy - 0.7 * r, cx + 0.7 * r, cy + 0.7 * r), face)
    else:
        cv.poly(_shape(kind, cx, cy, r, aspect), rim, SIGN)
        cv.paint(_shape(kind, cx, cy + 0.05 * r, 0.65 * r, aspect), face)


def _draw_sign_pole(ctx: _Ctx, x: float, z: float) -> None:
    rng = ctx.rng
    top = rng.uniform(2.6, 3.6)
    _vbar(ctx, x, z, 0, top, 0.08, _pole_colour(rng))
    for _ in range(1 + int(rng.random() < 0.35)):
        size = rng.uniform(0.5, 0.85)
        _draw_sign(ctx, x, z - 0.05, top - size / 2, size)
        top -= size + 0.1


def _draw_light_box(ctx: _Ctx, x: float, z: float, bottom: float) -> None:
    """Dark housing with three lamps, one lit; a fifth of them show their back."""
    cam, rng, cv = ctx.cam, ctx.rng, ctx.cv
    w = rng.uniform(0.45, 0.6)  # oversized, so that lights stay learnable at 256x128
    h = w * rng.uniform(2.6, 3.0)
    housing = _grey(rng, 20, 70, 5) if rng.random() < 0.8 else _jitter(rng, (90, 80, 30))
    cv.poly(cam.front_quad(x - w / 2, x + w / 2, bottom, bottom + h, z), housing, LIGHT)
    if rng.random() < 0.2:
        return
    lit, r = int(rng.integers(3)), 0.33 * w * cam.scale(z)
    for k in range(3):
        cx, cy = cam.pt(x, bottom + h * (5 - 2 * k) / 6, z)
        colour = _LAMPS[k] if k == lit else _scaled(housing, 1.6)
        cv.paint_ellipse((cx - r, cy - r, cx + r, cy + r), colour)


def _draw_light_pole(ctx: _Ctx, x: float, z: float) -> None:
    """Traffic light on top of, beside, or hanging from the arm of a pole."""
    rng, colour = ctx.rng, _pole_colour(ctx.rng)
    mount = rng.integers(3)
    if mount == 2:
        top = rng.uniform(5.0, 6.5)
        end = x - np.sign(x) * rng.uniform(2.5, 5.0)
        _vbar(ctx, x, z, 0, top, 0.16, colour)
        _hbar(ctx, x, end, top - 0.2, z, colour)
        _draw_light_box(ctx, end, z - 0.1, top - 1.4)
        return
    top = rng.uniform(2.6, 3.6)
    _vbar(ctx, x, z, 0, top, 0.12, colour)
    if mount == 0:
        _draw_light_box(ctx, x, z - 0.1, top)
    else:
        _draw_light_box(ctx, x - np.sign(x) * 0.3, z - 0.1, top - 1.1)


def _draw_lamp_pole(ctx: _Ctx, x: float, z: float) -> None:
    """Street lamp: tall pole, arm over the road and lamp head (all pole label)."""
    rng, cam, colour = ctx.rng, ctx.cam, _pole_colour(ctx.rng)
    top = rng.uniform(6.0, 9.0)
    end = x - np.sign(x) * rng.uniform(1.0, 2.5)
    _vbar(ctx, x, z, 0, top, 0.16, colour)
    _hbar(ctx, x, end, top, z, colour)
    head = cam.front_quad(end - 0.3, end + 0.3, top - 0.25, top, z - 0.05)
    ctx.cv.poly(head, _scaled(colour, 0.8), POLE)


# ---------------------------------------------------------------- trees and people


def _draw_tree(ctx: _Ctx, x: float, z: float, radius: float) -> None:
    """Trunk and a crown of overlapping ellipses (all vegetation, as in Cityscapes)."""
    cam, rng, cv = ctx.cam, ctx.rng, ctx.cv
    trunk_h = rng.uniform(1.8, 3.2)
    s = cam.scale(z)
    (px, py), (_, ty) = cam.pt(x, 0, z), cam.pt(x, trunk_h + radius, z)
    half = max(rng.uniform(0.12, 0.2) * s, _min_px(cam) / 2)
    cv.rect((px - half, ty, px + half, py), _jitter(rng, (75, 60, 45), 0.3), VEGETATION)
    green = _green(rng)
    for k in range(int(rng.integers(4, 8))):
        cx = px + rng.uniform(-0.6, 0.6) * radius * s
        cy = ty + rng.uniform(-0.5, 0.4) * radius * s
        rx, ry = rng.uniform(0.45, 0.8) * radius * s, rng.uniform(0.4, 0.7) * radius * s
        cv.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), _scaled(green, 0.8 + 0.06 * k), VEGETATION)


def _tree_shadow(ctx: _Ctx, x: float, z: float, radius: float) -> None:
    cam = ctx.cam
    (cx, cy), s = cam.pt(x, 0, z), cam.scale(z)
    ry = radius * s * cam.cam_h / z  # a ground disc is flattened by perspective
    ctx.cv.shadow_ellipse(
        (cx - radius * s, cy - ry, cx + radius * s, cy + ry), int(255 * (1 - ctx.sun))
    )


def _draw_person(ctx: _Ctx, x: float, z: float) -> None:
    """Head, torso, arms and walking legs, sized by perspective from the foot position."""
    cam, rng, cv = ctx.cam, ctx.rng, ctx.cv
    (fx, fy), s = cam.pt(x, 0, z), cam.scale(z)
    h = rng.uniform(1.55, 1.95)
    narrow = 0.6 if rng.random() < 0.4 else 1.0  # side view

    def p(dx: float, dy: float) -> Pt:
        return (fx + dx * narrow * s, fy - dy * h * s)

    shirt, legs = _jitter(rng, rng.uniform(20, 230, 3), 0.2), _jitter(rng, rng.uniform(20, 150, 3))
    skin = _jitter(rng, _pick(rng, [(225, 185, 160), (170, 120, 90), (110, 75, 55)]), 0.1)
    stride, swing, sw = rng.uniform(0.0, 0.25), rng.uniform(-0.12, 0.12), rng.uniform(0.18, 0.24)
    for hip, d in ((-0.075, -stride), (0.075, stride)):
        leg = [p(hip - 0.065, 0.5), p(hip + 0.065, 0.5), p(hip + d + 0.05, 0), p(hip + d - 0.05, 0)]
        cv.poly(leg, legs, PERSON)
    for side, d in ((-1, swing), (1, -swing)):
        inner = side * (sw - 0.08)
        arm = [p(side * sw, 0.8), p(inner, 0.8), p(inner + d, 0.45), p(side * sw + d, 0.45)]
        cv.poly(arm, shirt, PERSON)
    cv.poly([p(-sw, 0.82), p(sw, 0.82), p(0.16, 0.48), p(-0.16, 0.48)], shirt, PERSON)
    r = 0.065 * h * s
    cx, cy = fx, fy - (h * s - r)
    cv.ellipse(
        (cx - r * 0.85, cy - r, cx + r * 0.85, cy + r), _jitter(rng, (60, 45, 35), 0.5), PERSON
    )
    if rng.random() < 0.6:  # facing the camera
        cv.paint_ellipse((cx - r * 0.7, cy - r * 0.6, cx + r * 0.7, cy + r), skin)


def _person_shadow(ctx: _Ctx, x: float, z: float) -> None:
    cam = ctx.cam
    (cx, cy), s = cam.pt(x, 0, z), cam.scale(z)
    rx, ry = 0.35 * s, 0.35 * s * cam.cam_h / z + 1
    ctx.cv.shadow_ellipse((cx - rx, cy - ry, cx + rx, cy + ry), int(255 * (0.75 - 0.3 * ctx.sun)))


# ---------------------------------------------------------------- vehicles


def _side_plane(x: float, w: float) -> float | None:
    """X of the vehicle side the camera sees, or None when it is straight ahead."""
    if x - w / 2 > 0.3:
        return x - w / 2
    if x + w / 2 < -0.3:
        return x + w / 2
    return None


def _side_wheel(ctx: _Ctx, xs: float, zc: float, r: float, colour: Colour, label: int) -> None:
    (x0, y0), (x1, y1) = ctx.cam.pt(xs, 0, zc - r), ctx.cam.pt(xs, 2 * r, zc + r)
    ctx.cv.ellipse((x0, y0, x1, y1), colour, label)


def _lights(ctx: _Ctx, x: float, w: float, y: float, z: float, front: bool) -> None:
    colour = _grey(ctx.rng, 215, 250, 5) if front else _jitter(ctx.rng, (200, 30, 25), 0.15)
    for x0 in (x - w / 2 + 0.05, x + w / 2 - 0.3):
        ctx.cv.paint(ctx.cam.front_quad(x0, x0 + 0.25, y, y + 0.15, z), colour)


def _draw_car(ctx: _Ctx, x: float, z: float, w: float, length: float, front: bool) -> None:
    """Body box, narrower cabin with windows, wheels; side face when seen obliquely."""
    cam, rng, cv = ctx.cam, ctx.rng, ctx.cv
    h = rng.uniform(1.4, 1.6)
    belt = h * rng.uniform(0.55, 0.65)
    body, glass = _vehicle_colour(rng), _jitter(rng, (45, 55, 65), 0.4)
    tyre = _grey(rng, 15, 40, 3)
    z_cab, z_roof, z_end = z + 0.1 * length, z + 0.3 * length, z + 0.75 * length
    xs = _side_plane(x, w)
    if xs is not None:
        xc = xs + np.sign(xs) * 0.1  # the cabin is narrower than the body
        cv.poly(cam.side_quad(xs, z, z + length, 0.25, belt), _scaled(body, 0.85), CAR)
        cabin = [(belt, z_cab), (h, z_roof), (h, z_end), (belt, z + 0.92 * length)]
        cv.poly([cam.pt(xc, y, zz) for y, zz in cabin], _scaled(body, 0.85), CAR)
        panes = [(belt + 0.06, z_cab + 0.2), (h - 0.05, z_roof + 0.1), (h - 0.05, z_end - 0.1)]
        panes.append((belt + 0.06, z + 0.92 * length - 0.2))
        cv.paint([cam.pt(xc, y, zz) for y, zz in panes], glass)
        for zc in (z + 0.8, z + length - 0.8):
            _side_wheel(ctx, xs, zc, 0.32, tyre, CAR)
    half, top = w / 2 - 0.15, w / 2 - 0.2
    roof = [cam.pt(-half + x, h, z_roof), cam.pt(half + x, h, z_roof)]
    cv.poly(
        roof + [cam.pt(half + x, h, z_end), cam.pt(-half + x, h, z_end)], _scaled(body, 1.1), CAR
    )
    cv.poly(cam.front_quad(x - w / 2 + 0.05, x + w / 2 - 0.05, 0, 0.3, z + 0.4), tyre, CAR)
    rear = [cam.pt(x - half, belt, z_cab), cam.pt(x + half, belt, z_cab)]
    cv.poly(rear + [cam.pt(x + top, h, z_roof), cam.pt(x - top, h, z_roof)], body, CAR)
    dz = z_roof - z_cab
    pane = [cam.pt(x - half + 0.08, belt + 0.05, z_cab + 0.1 * dz)]
    pane += [cam.pt(x + half - 0.08, belt + 0.05, z_cab + 0.1 * dz)]
    pane += [
        cam.pt(x + top - 0.06, h - 0.05, z_cab + 0.9 * dz),
        cam.pt(x - top + 0.06, h - 0.05, z_cab + 0.9 * dz),
    ]
    cv.paint(pane, glass)
    cv.poly(cam.front_quad(x - w / 2, x + w / 2, 0.25, belt, z), body, CAR)
    cv.paint(cam.front_quad(x - w / 2, x + w / 2, 0.25, 0.38, z), _scaled(body, 0.6))
    _lights(ctx, x, w, belt - 0.25, z, front)
    cv.paint(cam.front_quad(x - 0.25, x + 0.25, 0.4, 0.52, z), _grey(rng, 190, 240, 4))


CAR_WIDTHS, CAR_LENGTHS = (1.65, 1.9), (3.8, 4.8)  # metres


def _vehicle_shadow(ctx: _Ctx, x: float, z: float, w: float, length: float) -> None:
    """Dark contact shadow under the vehicle, even on overcast days."""
    quad = ctx.cam.ground_quad(x - w / 2 - 0.15, x + w / 2 + 0.15, z - 0.2, z + length + 0.2)
    ctx.cv.shadow(quad, int(255 * (0.55 - 0.3 * ctx.sun)))


# ---------------------------------------------------------------- placing objects


@dataclass(frozen=True)
class _Item:
    z: float  # nearest depth: items are drawn far to near
    draw: Callable[[], None]
    shadow: Callable[[], None] | None = None


def _sample_z(ctx: _Ctx, x: float, z_max: float, z_min: float = 0.0) -> float | None:
    """Log-uniform depth at which a ground point at `x` is in view, or None if none is."""
    cam = ctx.cam
    lo = max(cam.visible_z(x, cam.height * 0.84), z_min)
    if lo >= z_max:
        return None
    return lo * (z_max / lo) ** ctx.rng.random()


def _place_poles(ctx: _Ctx, sides: list[_Side]) -> list[_Item]:
    rng = ctx.rng
    extra = (_draw_sign_pole, _draw_light_pole, _draw_lamp_pole)
    kinds = [_draw_sign_pole, _draw_light_pole]
    kinds += [extra[int(rng.integers(3))] for _ in range(int(rng.integers(0, 4)))]
    items = []
    for draw in kinds:
        side = sides[int(rng.integers(2))]
        x = side.sign * (side.kerb + rng.uniform(0.3, 0.8))
        z = _sample_z(ctx, x, _Z_SMALL)
        if z is not None:
            items.append(_Item(z, partial(draw, ctx, x, z)))
    return items


def _tree_item(ctx: _Ctx, x: float, z: float) -> _Item:
    radius = ctx.rng.uniform(1.3, 3.0)
    shadow = partial(_tree_shadow, ctx, x, z, radius) if ctx.sun else None
    return _Item(z, partial(_draw_tree, ctx, x, z, radius), shadow)


def _place_avenues(ctx: _Ctx, sides: list[_Side]) -> list[_Item]:
    """Rows of trees along the kerb (on the grass strip if there is one) on some sides."""
    rng, items = ctx.rng, []
    for side in sides:
        if side.lawn or rng.random() < 0.5:
            x = side.sign * (side.kerb + 0.2 + (side.lawn / 2 if side.lawn else 0.7))
            z, step = _sample_z(ctx, x, 25.0), rng.uniform(8, 16)
            while z is not None and z < 90:
                if rng.random() < 0.85:
                    items.append(_tree_item(ctx, x, z))
                z += step
    return items


def _place_park(ctx: _Ctx, side: _Side) -> list[_Item]:
    """Trees scattered on the grass beyond the sidewalk of a park side."""
    items = []
    for _ in range(int(ctx.rng.integers(4, 10))):
        x = side.sign * (side.walk + ctx.rng.uniform(1, 25))
        z = _sample_z(ctx, x, 120.0)
        if z is not None:
            items.append(_tree_item(ctx, x, z))
    return items


def _place_persons(ctx: _Ctx, sides: list[_Side]) -> list[_Item]:
    rng, items = ctx.rng, []
    for _ in range(int(rng.integers(1, 7))):
        side = sides[int(rng.integers(2))]
        x = side.sign * rng.uniform(side.kerb + 0.5 + side.lawn, side.walk - 0.3)
        z = _sample_z(ctx, x, _Z_SMALL)
        if z is not None:
            items.append(
                _Item(z, partial(_draw_person, ctx, x, z), partial(_person_shadow, ctx, x, z))
            )
    return items


def _place_vehicles(ctx: _Ctx, bounds: list[float], sides: list[_Side]) -> list[_Item]:
    """Traffic in every lane (oncoming on the left of a two-way road) and parked cars."""
    rng = ctx.rng
    two_way = rng.random() < 0.5
    slots = [((a + b) / 2, two_way and a + b < -3, True) for a, b in zip(bounds, bounds[1:])]
    slots += [
        (s.sign * (s.kerb - 1.1), bool(rng.random() < 0.5), False) for s in sides if s.parking
    ]
    items = []
    for x, front, moving in slots:
        z = _sample_z(ctx, x, 60.0, z_min=9.0 if abs(x) < 1.5 else 0.0)
        while z is not None and z < 80:
            w, length = rng.uniform(*CAR_WIDTHS), rng.uniform(*CAR_LENGTHS)
            if rng.random() < (0.5 if moving else 0.8):
                shadow = partial(_vehicle_shadow, ctx, x, z, w, length)
                items.append(_Item(z, partial(_draw_car, ctx, x, z, w, length, front), shadow))
            z += length + rng.uniform(1.0 if not moving else 4.0, 30.0)
    if not items:  # every scene has at least one car
        x = (bounds[0] + bounds[1]) / 2
        z = rng.uniform(12, 40)
        items.append(_Item(z, partial(_draw_car, ctx, x, z, 1.8, 4.3, False)))
    return items


# ---------------------------------------------------------------- ego vehicle and finishing


def _draw_ego(ctx: _Ctx) -> None:
    """The camera car's bonnet: a dark band along the bottom with a curved top edge."""
    cam, rng, cv = ctx.cam, ctx.rng, ctx.cv
    w, h = cam.width, cam.height
    depth = h * rng.uniform(0.07, 0.15)
    xc, bend = w * rng.uniform(0.4, 0.6), rng.uniform(0.3, 0.9)
    xs = np.linspace(-1, w + 1, 25)
    ys = h - depth + bend * depth * ((xs - xc) / (w / 2)) ** 2
    colour = _grey(rng, 15, 70, 6)
    cv.poly(list(zip(xs, ys)) + [(w + 1, h + 1), (-1, h + 1)], colour, EGO)
    # The bonnet's edge mirrors the bright sky.
    cv.paint_line(list(zip(xs, ys + max(1.0, h / 100))), _scaled(colour, 2.0), max(1, h // 100))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Unit noise with features about `cell` pixels across."""
    small = rng.standard_normal((h // cell + 2, w // cell + 2), dtype=np.float32)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def _bricks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Mortar lines of a running-bond brick pattern: -1 on mortar, small positive elsewhere."""
    p = max(2, h // 40)
    rows = np.arange(h)[:, None] + int(rng.integers(p))
    cols = np.arange(w)[None, :] + int(rng.integers(3 * p))
    mortar = (rows % p == 0) | ((cols + (rows // p % 2) * (3 * p // 2)) % (3 * p) == 0)
    return np.where(mortar, np.float32(-1), np.float32(0.3))


_TEXTURE_LUT = np.zeros((4, 256), np.float32)
for _cls, _amps in _TEXTURE.items():
    _TEXTURE_LUT[:, _cls] = _amps


def _texture(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """Multiplicative texture: each class mixes noise fields of different frequencies."""
    h, w = label.shape
    fields = (
        rng.standard_normal((h, w), dtype=np.float32),
        _smooth_noise(rng, h, w, max(2, h // 48)),
        _smooth_noise(rng, h, w, max(4, h // 8)),
        _bricks(rng, h, w),
    )
    lut = _TEXTURE_LUT * rng.uniform(0.6, 1.4, _TEXTURE_LUT.shape).astype(np.float32)
    tex = np.ones((h, w), np.float32)
    for field, amp in zip(fields, lut):
        tex += amp[label] * field
    return tex


def _finish(ctx: _Ctx) -> tuple[np.ndarray, np.ndarray]:
    """Apply shading, textures, per-image lighting and sensor noise."""
    rng = ctx.rng
    label = np.array(ctx.cv.label)
    gain = np.asarray(ctx.cv.shade, dtype=np.float32) * np.float32(1 / 255)
    gain *= _texture(rng, label)
    warmth = rng.uniform(-0.12, 0.12)
    light = (
        rng.uniform(0.65, 1.25) * np.array([1 + warmth, 1, 1 - warmth]) * rng.uniform(0.96, 1.04, 3)
    )
    contrast = rng.uniform(0.75, 1.2)
    img = np.asarray(ctx.cv.rgb, dtype=np.float32) * gain[..., None]
    img *= (light * contrast).astype(np.float32)
    img += np.float32(110 * (1 - contrast) + 0.5)  # contrast pivots on mid-grey; +0.5 rounds
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1.5, 7.0))
    return np.clip(img, 0, 255).astype(np.uint8), label


# ---------------------------------------------------------------- public API


def render_scene(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: RGB image uint8 (H, W, 3) and Cityscapes labelIds uint8 (H, W).

    All randomness comes from `rng`, so the same generator state gives the same scene.
    """
    cam = _sample_camera(rng, width, height)
    sun = rng.uniform(0.3, 0.6) if rng.random() < 0.6 else 0.0
    ctx = _Ctx(_Canvas(_sky(rng, width, height, cam.hy)), cam, rng, sun)
    _draw_clouds(ctx)
    bounds = _sample_road(rng)
    sides = [_sample_side(rng, -1, bounds[0]), _sample_side(rng, 1, bounds[-1])]
    z_start, z_end = cam.ground_z(height) * 0.3, rng.uniform(180, 320)
    rows = [[] if s.park else _sample_facades(rng, s, z_start, z_end) for s in sides]
    park = [item for s in sides if s.park for item in _place_park(ctx, s)]
    items = _place_poles(ctx, sides) + _place_avenues(ctx, sides)
    items += _place_persons(ctx, sides) + _place_vehicles(ctx, bounds, sides)
    _draw_ground(ctx, bounds, sides, rows[0] + rows[1])
    _draw_shadows(ctx, rows[0] + rows[1], park + items)
    _draw_backdrop(ctx, z_end)
    _draw_roadside(ctx, sides, rows, park, z_end)
    for item in sorted(items, key=lambda it: -it.z):
        item.draw()
    _draw_ego(ctx)
    return _finish(ctx)


def _draw_shadows(ctx: _Ctx, facades: list[_Facade], items: list[_Item]) -> None:
    """Shade the ground before anything stands on it: whatever is drawn later is unshaded."""
    if ctx.sun:
        _draw_building_shadows(ctx, facades, sun_side=1 if ctx.rng.random() < 0.5 else -1)
    for item in items:
        if item.shadow is not None:
            item.shadow()


def _draw_roadside(
    ctx: _Ctx, sides: list[_Side], rows: list[list[_Facade]], park: list[_Item], z_end: float
) -> None:
    """Everything beyond the building line, far to near: facades, park trees, park hedges."""
    for row in rows:
        for i in reversed(range(len(row))):
            _draw_facade(ctx, row[i], row[i - 1] if i else None)
    for item in sorted(park, key=lambda it: -it.z):
        item.draw()
    z0 = ctx.cam.ground_z(ctx.cam.height) * 0.6
    for side in sides:
        if side.park and ctx.rng.random() < 0.5:
            _draw_barrier(ctx, side.sign * side.walk, z0, z_end)


def _scene_paths(out: Path, split: str, index: int) -> tuple[Path, Path]:
    """Official Cityscapes names; frame 19 is the annotated frame of each sequence."""
    city = CITIES[index % len(CITIES)]
    stem = f"{city}_{index // len(CITIES):06d}_{19:06d}"
    return (
        out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
        out / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
    )


def _save_png(image: Image.Image, path: Path) -> None:
    """Write atomically: an interrupted run never leaves a truncated PNG under the final name."""
    with atomic_path(path) as temporary:
        image.save(temporary, **_PNG_OPTIONS)


def _write_scene(job: tuple[Path, int, int, int, int, int]) -> Path:
    out, split_number, index, width, height, seed = job
    rng = np.random.default_rng([seed, split_number, index])
    image, label = render_scene(rng, width, height)
    image_path, label_path = _scene_paths(out, SPLITS[split_number], index)
    _save_png(Image.fromarray(label), label_path)
    _save_png(Image.fromarray(image), image_path)
    return image_path


def synthesize(
    out: Path,
    n_train: int,
    n_val: int,
    size: tuple[int, int] = (512, 256),
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write n_train + n_val scenes (size = (width, height)) under out in the Cityscapes layout.

    Scene `index` of split `s` (0 train, 1 val) is rendered from
    ``numpy.random.default_rng([seed, s, index])``, so files do not depend on the other counts
    or on the rendering order, and a seed always gives byte-identical PNGs.
    Returns the written image paths, train first, in index order.
    """
    width, height = size
    if n_train < 0 or n_val < 0 or seed < 0:
        raise ConfigError("synthetic scenes: the counts and the seed must be non-negative")
    if width < 32 or height < 16:
        raise ConfigError(
            f"synthetic scenes: size {width}x{height} is too small; use at least 32x16"
        )
    jobs = [
        (Path(out), s, i, width, height, seed)
        for s, n in enumerate((n_train, n_val))
        for i in range(n)
    ]
    paths = list(
        parallel_map(
            _write_scene, jobs, description="synthetic scenes", unit="scene", progress=progress
        )
    )
    # Written last: its presence says the set is complete (an interrupted run leaves none).
    settings = {"train": n_train, "val": n_val, "size": [width, height], "seed": seed}
    write_json(Path(out) / COMPLETE_MARKER, settings)
    return paths
