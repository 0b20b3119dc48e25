"""A procedural, seeded, HAR-shaped dataset: stick figures doing the 15 HAR actions.

Each class is told apart only by what the figure does and holds (a phone at the head is
`calling`, a bicycle under the figure is `cycling`, two figures embracing are `hugging`).
Every colour (background, clutter, clothes, skin, props) is drawn independently of the
class, so the image's mean colour says nothing about the label; pose jitter, scale,
position, mirroring, clutter and occluders make the task learnable but not trivial.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from harclip.har import CLASS_NAMES

Point = tuple[float, float]
INK = (20, 20, 20)  # outlines and faces: the same in every class
# Lightness ranges: pale scenery, darker figures and props, so a figure stands out from its
# ground as people do in photos. Hues and saturations are free; nothing depends on the class.
SCENERY_LIGHTNESS = (0.55, 0.92)
FIGURE_LIGHTNESS = (0.12, 0.45)
SKIN_LIGHTNESS = (0.3, 0.6)


def random_colour(rng: np.random.Generator, lightness: tuple[float, float],
                  saturation: tuple[float, float] = (0.2, 1.0)) -> tuple[int, int, int]:
    """A colour of random hue and saturation within a lightness range."""
    rgb = colorsys.hls_to_rgb(rng.uniform(0, 1), rng.uniform(*lightness), rng.uniform(*saturation))
    return tuple(round(255 * c) for c in rgb)

# Standing pose in body units (torso length = 1), origin at the hip, y pointing down.
STANDING: dict[str, Point] = {
    "head": (0.0, -1.42), "neck": (0.0, -1.0), "hip": (0.0, 0.0),
    "l_elbow": (-0.28, -0.5), "l_hand": (-0.32, 0.0),
    "r_elbow": (0.28, -0.5), "r_hand": (0.32, 0.0),
    "l_knee": (-0.16, 0.62), "l_foot": (-0.2, 1.22),
    "r_knee": (0.16, 0.62), "r_foot": (0.2, 1.22),
}
SEATED_LEGS: dict[str, Point] = {
    "l_knee": (0.55, 0.02), "l_foot": (0.5, 0.68), "r_knee": (0.6, 0.06), "r_foot": (0.62, 0.7),
}


@dataclass
class Figure:
    """A person: joint positions in body units plus face details."""

    joints: dict[str, Point]
    mouth: str = "smile"  # smile | open | none
    eyes: str = "open"  # open | closed
    head_tilt: float = 0.0  # face direction offset, body units


@dataclass
class Scene:
    """What one class draws: figures (with their x offsets) and the props behind and in front."""

    figures: list[tuple[Figure, float]]
    behind: list[Callable[[Painter], None]] = field(default_factory=list)
    in_front: list[Callable[[Painter], None]] = field(default_factory=list)
    rotation: float = 0.0  # degrees, for lying figures


def _pose(**overrides: Point) -> dict[str, Point]:
    return {**STANDING, **overrides}


class Painter:
    """Maps body units to pixels (scale, offset, mirror, rotation) and draws with jitter."""

    def __init__(self, image: Image.Image, rng: np.random.Generator, unit: float,
                 origin: Point, mirror: bool, rotation: float, line: int) -> None:
        self.draw = ImageDraw.Draw(image)
        self.rng = rng
        self.unit = unit
        self.origin = origin
        self.mirror = -1.0 if mirror else 1.0
        self.cos, self.sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        self.line = line
        self.rim = max(1, line // 3)

    def px(self, point: Point) -> Point:
        x, y = point[0] * self.mirror, point[1]
        x, y = x * self.cos - y * self.sin, x * self.sin + y * self.cos
        return self.origin[0] + x * self.unit, self.origin[1] + y * self.unit

    def colour(self) -> tuple[int, int, int]:
        """A colour for clothes and props."""
        return random_colour(self.rng, FIGURE_LIGHTNESS)

    def segment(self, a: Point, b: Point, fill, width: float = 1.0,
                outlined: bool = False) -> None:
        """A line; `outlined` adds a dark rim, the cartoon edge that shows shape whatever
        the colours."""
        pixels = max(1, round(self.line * width))
        if outlined:
            self.draw.line([self.px(a), self.px(b)], fill=INK, width=pixels + 2 * self.rim)
        self.draw.line([self.px(a), self.px(b)], fill=fill, width=pixels)

    def disc(self, centre: Point, radius: float, fill, outline=None) -> None:
        x, y = self.px(centre)
        r = radius * self.unit
        self.draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=outline,
                          width=max(1, self.line // 2))

    def box(self, corner_a: Point, corner_b: Point, fill, outline=None) -> None:
        (x0, y0), (x1, y1) = self.px(corner_a), self.px(corner_b)
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        if self.cos != 1.0:  # rotated scenes: draw the box as the rotated quadrilateral
            ax, ay = corner_a
            bx, by = corner_b
            corners = [self.px(p) for p in ((ax, ay), (bx, ay), (bx, by), (ax, by))]
        self.draw.polygon(corners, fill=fill, outline=outline)

    def arc(self, centre: Point, radius: float, start: float, end: float, fill,
            width: float = 1.0) -> None:
        x, y = self.px(centre)
        r = radius * self.unit
        if self.mirror < 0:
            start, end = 180 - end, 180 - start
        self.draw.arc([x - r, y - r, x + r, y + r], start, end, fill=fill,
                      width=max(1, round(self.line * width)))


def _draw_figure(p: Painter, figure: Figure, dx: float) -> None:
    jitter = 0.06
    j = {name: (x + dx + p.rng.normal(0, jitter), y + p.rng.normal(0, jitter))
         for name, (x, y) in figure.joints.items()}
    shirt, trousers = p.colour(), p.colour()
    skin = random_colour(p.rng, SKIN_LIGHTNESS)
    for side in "lr":
        p.segment(j["hip"], j[f"{side}_knee"], trousers, 1.5, outlined=True)
        p.segment(j[f"{side}_knee"], j[f"{side}_foot"], trousers, 1.3, outlined=True)
    p.segment(j["neck"], j["hip"], shirt, 2.6, outlined=True)
    for side in "lr":
        p.segment(j["neck"], j[f"{side}_elbow"], shirt, 1.3, outlined=True)
        p.segment(j[f"{side}_elbow"], j[f"{side}_hand"], skin, 1.0, outlined=True)
        p.disc(j[f"{side}_hand"], 0.07, skin)
    head = j["head"]
    p.disc(head, 0.3, skin, INK)
    if p.rng.random() < 0.6:  # hair, a nuisance the classes share
        p.arc(head, 0.28, 180, 360, p.colour(), 1.5)
    face_x = head[0] + 0.1 + figure.head_tilt
    for ex in (-0.09, 0.09):
        eye = (face_x + ex, head[1] - 0.07)
        if figure.eyes == "closed":
            p.segment((eye[0] - 0.05, eye[1]), (eye[0] + 0.05, eye[1]), INK, 0.4)
        else:
            p.disc(eye, 0.035, INK)
    if figure.mouth == "open":
        p.disc((face_x, head[1] + 0.12), 0.12, INK)
    elif figure.mouth == "smile":
        p.arc((face_x, head[1] + 0.02), 0.1, 20, 160, INK, 0.4)


# --- props ---------------------------------------------------------------------------------

def _phone(at: Point, upright: bool = True) -> Callable[[Painter], None]:
    w, h = (0.1, 0.2) if upright else (0.2, 0.1)
    return lambda p: p.box((at[0] - w, at[1] - h), (at[0] + w, at[1] + h),
                           p.colour(), INK)


def _table(x0: float, x1: float, top: float) -> Callable[[Painter], None]:
    def draw(p: Painter) -> None:
        wood = p.colour()
        p.box((x0, top), (x1, top + 0.12), wood)
        p.segment((x0 + 0.1, top), (x0 + 0.1, 1.2), wood, 1.2)
        p.segment((x1 - 0.1, top), (x1 - 0.1, 1.2), wood, 1.2)
    return draw


def _chair(p: Painter) -> None:
    frame = p.colour()
    p.box((-0.35, 0.08), (0.55, 0.22), frame)
    p.segment((-0.35, 0.1), (-0.45, -1.0), frame, 1.6)
    p.segment((-0.3, 0.2), (-0.3, 1.2), frame, 1.2)
    p.segment((0.5, 0.2), (0.5, 1.2), frame, 1.2)


def _bicycle(p: Painter) -> None:
    metal, tyre = p.colour(), p.colour()
    back, front = (-0.65, 0.8), (0.95, 0.8)
    for wheel in (back, front):
        p.disc(wheel, 0.48, None, tyre)
        p.disc(wheel, 0.05, tyre)
    crank = (0.25, 0.75)
    for a, b in ((back, crank), (crank, (0.0, 0.05)), ((0.0, 0.05), back),
                 ((0.0, 0.05), (0.7, -0.1)), ((0.7, -0.1), crank), ((0.7, -0.1), front),
                 ((0.7, -0.1), (0.68, -0.45)), ((0.55, -0.5), (0.85, -0.45))):
        p.segment(a, b, metal, 1.0)


def _laptop(p: Painter) -> None:
    case = p.colour()
    p.box((0.55, -0.3), (1.25, -0.2), case, INK)
    p.draw.polygon([p.px((1.25, -0.25)), p.px((1.45, -0.95)), p.px((1.52, -0.9)),
                    p.px((1.32, -0.2))], fill=case, outline=INK)


def _plate_and_food(p: Painter) -> None:
    p.disc((1.0, -0.3), 0.2, p.colour(), INK)
    p.disc((1.0, -0.36), 0.08, p.colour())


def _cup(at: Point) -> Callable[[Painter], None]:
    return lambda p: p.box((at[0] - 0.08, at[1] - 0.16), (at[0] + 0.1, at[1] + 0.14),
                           p.colour(), INK)


def _fork(at: Point) -> Callable[[Painter], None]:
    return lambda p: p.segment(at, (at[0] + 0.25, at[1] + 0.25), (200, 200, 200), 0.6)


def _headphones(p: Painter) -> None:
    band = p.colour()
    p.arc((0.0, -1.42), 0.36, 190, 350, band, 1.2)
    p.box((-0.4, -1.52), (-0.27, -1.3), band, INK)
    p.box((0.27, -1.52), (0.4, -1.3), band, INK)


def _clap_lines(p: Painter) -> None:
    ink = p.colour()
    for angle in (-60, -20, 20, 60):
        a = math.radians(angle - 90)
        start = (0.0 + 0.18 * math.cos(a), -0.72 + 0.18 * math.sin(a))
        end = (0.0 + 0.35 * math.cos(a), -0.72 + 0.35 * math.sin(a))
        p.segment(start, end, ink, 0.5)


def _bed(p: Painter) -> None:
    # Drawn in the rotated frame of a lying figure: along the body, behind it.
    p.box((-0.45, -1.95), (0.45, 1.45), p.colour())
    p.box((-0.35, -1.9), (0.35, -1.2), p.colour(), INK)


def _blanket(p: Painter) -> None:
    p.box((-0.42, 0.1), (0.42, 1.4), p.colour(), INK)


# --- the 15 actions ------------------------------------------------------------------------

def _scene(label: str) -> Scene:
    if label == "calling":
        fig = Figure(_pose(r_elbow=(0.45, -0.75), r_hand=(0.3, -1.35)))
        return Scene([(fig, 0.0)], in_front=[_phone((0.3, -1.38))])
    if label == "clapping":
        fig = Figure(_pose(l_elbow=(-0.38, -0.5), l_hand=(-0.02, -0.72),
                           r_elbow=(0.38, -0.5), r_hand=(0.02, -0.72)))
        return Scene([(fig, 0.0)], in_front=[_clap_lines])
    if label == "cycling":
        fig = Figure(_pose(neck=(0.35, -0.92), head=(0.5, -1.3), hip=(0.0, 0.0),
                           l_elbow=(0.55, -0.6), l_hand=(0.6, -0.48),
                           r_elbow=(0.6, -0.62), r_hand=(0.72, -0.46),
                           l_knee=(0.45, 0.2), l_foot=(0.35, 0.85),
                           r_knee=(0.35, 0.35), r_foot=(0.15, 0.7)))
        return Scene([(fig, 0.0)], behind=[_bicycle])
    if label == "dancing":
        fig = Figure(_pose(l_elbow=(-0.45, -1.3), l_hand=(-0.65, -1.75),
                           r_elbow=(0.5, -0.9), r_hand=(0.9, -1.05),
                           r_knee=(0.5, 0.4), r_foot=(0.85, 0.72)))
        return Scene([(fig, 0.0)])
    if label == "drinking":
        fig = Figure(_pose(head=(-0.05, -1.42), r_elbow=(0.45, -0.7), r_hand=(0.25, -1.25)),
                     mouth="none", head_tilt=-0.04)
        return Scene([(fig, 0.0)], in_front=[_cup((0.3, -1.28))])
    if label == "eating":
        fig = Figure(_pose(r_elbow=(0.45, -0.55), r_hand=(0.15, -1.2),
                           l_elbow=(0.3, -0.45), l_hand=(0.6, -0.35), **SEATED_LEGS))
        return Scene([(fig, 0.0)], behind=[_chair, _table(0.55, 1.5, -0.18)],
                     in_front=[_plate_and_food, _fork((0.15, -1.2))])
    if label == "fighting":
        left = Figure(_pose(r_elbow=(0.35, -0.85), r_hand=(0.8, -0.95),
                            l_elbow=(0.25, -0.6), l_hand=(0.35, -0.95),
                            l_knee=(-0.3, 0.55), l_foot=(-0.5, 1.2)), mouth="open")
        right = Figure(_pose(l_elbow=(-0.35, -0.85), l_hand=(-0.8, -1.0),
                             r_elbow=(-0.25, -0.6), r_hand=(-0.35, -0.95),
                             r_knee=(0.3, 0.55), r_foot=(0.5, 1.2)), mouth="open",
                       head_tilt=-0.2)
        return Scene([(left, -0.85), (right, 0.85)])
    if label == "hugging":
        left = Figure(_pose(r_elbow=(0.45, -0.75), r_hand=(0.75, -0.8),
                            l_elbow=(0.2, -0.55), l_hand=(0.7, -0.55)))
        right = Figure(_pose(l_elbow=(-0.45, -0.8), l_hand=(-0.75, -0.85),
                             r_elbow=(-0.2, -0.5), r_hand=(-0.7, -0.5)), head_tilt=-0.2)
        return Scene([(left, -0.3), (right, 0.3)])
    if label == "laughing":
        fig = Figure(_pose(head=(-0.12, -1.4), neck=(-0.05, -1.0),
                           l_elbow=(-0.35, -0.45), l_hand=(-0.05, -0.3),
                           r_elbow=(0.35, -0.45), r_hand=(0.05, -0.3)),
                     mouth="open", eyes="closed")
        return Scene([(fig, 0.0)])
    if label == "listening_to_music":
        fig = Figure(_pose(r_elbow=(0.3, -0.45), r_hand=(0.35, -0.15)), eyes="closed")
        return Scene([(fig, 0.0)], in_front=[_headphones])
    if label == "running":
        fig = Figure(_pose(neck=(0.3, -0.95), head=(0.45, -1.35),
                           l_elbow=(-0.15, -0.5), l_hand=(-0.45, -0.3),
                           r_elbow=(0.6, -0.55), r_hand=(0.8, -0.85),
                           l_knee=(0.55, 0.35), l_foot=(0.45, 0.95),
                           r_knee=(-0.25, 0.55), r_foot=(-0.75, 0.85)))
        return Scene([(fig, 0.0)])
    if label == "sitting":
        fig = Figure(_pose(l_elbow=(0.15, -0.45), l_hand=(0.45, -0.05),
                           r_elbow=(0.25, -0.45), r_hand=(0.55, 0.0), **SEATED_LEGS))
        return Scene([(fig, 0.0)], behind=[_chair])
    if label == "sleeping":
        fig = Figure(_pose(l_hand=(-0.2, -0.05), r_hand=(0.2, -0.05)),
                     mouth="none", eyes="closed")
        return Scene([(fig, 0.0)], behind=[_bed], in_front=[_blanket], rotation=90.0)
    if label == "texting":
        fig = Figure(_pose(head=(0.05, -1.38), l_elbow=(-0.3, -0.35), l_hand=(-0.06, -0.6),
                           r_elbow=(0.3, -0.35), r_hand=(0.06, -0.6)), mouth="none",
                     head_tilt=0.0)
        return Scene([(fig, 0.0)], in_front=[_phone((0.0, -0.66), upright=False)])
    if label == "using_laptop":
        fig = Figure(_pose(l_elbow=(0.35, -0.45), l_hand=(0.75, -0.32),
                           r_elbow=(0.45, -0.5), r_hand=(0.9, -0.33), **SEATED_LEGS))
        return Scene([(fig, 0.0)], behind=[_chair, _table(0.5, 1.6, -0.18)], in_front=[_laptop])
    raise ValueError(f"unknown HAR class {label!r}; expected one of {', '.join(CLASS_NAMES)}")


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    for _ in range(rng.integers(1, 6)):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
        w, h = rng.uniform(0.05, 0.45, 2) * size
        colour = random_colour(rng, SCENERY_LIGHTNESS)
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.line([x0, y0, x0 + w, y0 + h], fill=colour, width=int(rng.integers(1, 4)))


def render(label: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one image of `label`, size×size RGB, with every nuisance drawn from `rng`."""
    scene = _scene(label)
    supersample = 2
    canvas = size * supersample
    background = random_colour(rng, SCENERY_LIGHTNESS)
    image = Image.new("RGB", (canvas, canvas), background)
    _clutter(ImageDraw.Draw(image), rng, canvas)
    unit = canvas * rng.uniform(0.2, 0.26)
    origin = (canvas * rng.uniform(0.4, 0.6), canvas * rng.uniform(0.5, 0.56))
    painter = Painter(image, rng, unit, origin, mirror=bool(rng.random() < 0.5),
                      rotation=scene.rotation + rng.normal(0, 6),
                      line=max(2, round(unit * rng.uniform(0.13, 0.2))))
    for prop in scene.behind:
        prop(painter)
    for figure, dx in scene.figures:
        _draw_figure(painter, figure, dx)
    for prop in scene.in_front:
        prop(painter)
    if rng.random() < 0.2:  # a partial occluder in front of everything
        x0, y0 = rng.uniform(0, 0.8, 2) * canvas
        w, h = rng.uniform(0.08, 0.22, 2) * canvas
        draw = ImageDraw.Draw(image)
        draw.rectangle([x0, y0, x0 + w, y0 + h],
                       fill=random_colour(rng, SCENERY_LIGHTNESS))
    return image.resize((size, size), Image.Resampling.LANCZOS)


def generate(images_per_class: int, size: int, seed: int) -> Iterator[tuple[str, Image.Image]]:
    """A balanced synthetic HAR set, deterministic for a seed, classes interleaved, lazily."""
    rng = np.random.default_rng(seed)
    for _ in range(images_per_class):
        for label in CLASS_NAMES:
            yield label, render(label, size, rng)
