"""The pen of the synthetic worlds: colours, a painter in body units, a stick person and the
props around people (phone, cup, fork, laptop, chair, table, bicycle, bed, headphones).

Body units: torso length 1, origin at the first person's hip, y pointing down. Every colour is
drawn at random within a lightness range (pale scenery, darker figures and props), so no
colour says what a scene shows.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]
INK = (20, 20, 20)  # outlines and faces: the same in every scene
SCENERY_LIGHTNESS = (0.55, 0.92)
FIGURE_LIGHTNESS = (0.12, 0.45)
SKIN_LIGHTNESS = (0.3, 0.6)
JITTER = 0.06
"""Standard deviation of every drawn joint's position, body units."""
ALL_HUES = (0.0, 1.0)
"""A palette: the hues (turns of the colour wheel, 0 red, 1/3 green, 2/3 blue) every colour
of a scene is drawn from; a range may cross 0 (-0.2 to 0.3: magenta, red, orange, yellow)."""


def random_colour(rng: np.random.Generator, lightness: tuple[float, float],
                  hues: tuple[float, float] = ALL_HUES,
                  saturation: tuple[float, float] = (0.2, 1.0)) -> tuple[int, int, int]:
    """A colour of random hue (within `hues`) and saturation, within a lightness range. Any
    palette draws the same three numbers, so a palette changes colours and nothing else."""
    rgb = colorsys.hls_to_rgb(rng.uniform(*hues) % 1.0, rng.uniform(*lightness),
                              rng.uniform(*saturation))
    return tuple(round(255 * c) for c in rgb)


class Painter:
    """Maps body units to pixels (scale, offset, mirror, rotation) and draws."""

    def __init__(self, image: Image.Image, rng: np.random.Generator, unit: float,
                 origin: Point, mirror: bool, rotation: float, line: int,
                 hues: tuple[float, float] = ALL_HUES) -> None:
        self.draw = ImageDraw.Draw(image)
        self.rng = rng
        self.hues = hues
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
        return random_colour(self.rng, FIGURE_LIGHTNESS, self.hues)

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
        (ax, ay), (bx, by) = corner_a, corner_b
        self.polygon(((ax, ay), (bx, ay), (bx, by), (ax, by)), fill, outline)

    def polygon(self, corners, fill, outline=None) -> None:
        self.draw.polygon([self.px(p) for p in corners], fill=fill, outline=outline)

    def arc(self, centre: Point, radius: float, start: float, end: float, fill,
            width: float = 1.0) -> None:
        x, y = self.px(centre)
        r = radius * self.unit
        if self.mirror < 0:
            start, end = 180 - end, 180 - start
        self.draw.arc([x - r, y - r, x + r, y + r], start, end, fill=fill,
                      width=max(1, round(self.line * width)))


def person(p: Painter, joints: dict[str, Point], mouth: str, eyes: str, facing: float,
           headphones: bool) -> None:
    """A stick person at `joints` (each drawn with jitter), face turned to `facing` (+1
    right, -1 left). mouth: closed (a smile) | open | hidden; eyes: open | closed."""
    j = {name: (x + p.rng.normal(0, JITTER), y + p.rng.normal(0, JITTER))
         for name, (x, y) in joints.items()}
    shirt, trousers = p.colour(), p.colour()
    skin = random_colour(p.rng, SKIN_LIGHTNESS, p.hues)
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
    if p.rng.random() < 0.6:  # hair, a nuisance every scene shares
        p.arc(head, 0.28, 180, 360, p.colour(), 1.5)
    face_x = head[0] + 0.1 * facing
    for ex in (-0.09, 0.09):
        eye = (face_x + ex, head[1] - 0.07)
        if eyes == "closed":
            p.segment((eye[0] - 0.05, eye[1]), (eye[0] + 0.05, eye[1]), INK, 0.4)
        else:
            p.disc(eye, 0.035, INK)
    if mouth == "open":
        p.disc((face_x, head[1] + 0.12), 0.12, INK)
    elif mouth == "closed":
        p.arc((face_x, head[1] + 0.02), 0.1, 20, 160, INK, 0.4)
    if headphones:
        band = p.colour()
        p.arc(head, 0.36, 190, 350, band, 1.2)
        for side in (-1, 1):
            p.box((head[0] + side * 0.27, head[1] - 0.1), (head[0] + side * 0.4, head[1] + 0.12),
                  band, INK)


# --- props, each at a point in body units --------------------------------------------------

def phone(p: Painter, at: Point, upright: bool = True) -> None:
    w, h = (0.1, 0.2) if upright else (0.2, 0.1)
    p.box((at[0] - w, at[1] - h), (at[0] + w, at[1] + h), p.colour(), INK)


def cup(p: Painter, at: Point) -> None:
    p.box((at[0] - 0.08, at[1] - 0.16), (at[0] + 0.1, at[1] + 0.14), p.colour(), INK)


def fork(p: Painter, at: Point, facing: float) -> None:
    p.segment(at, (at[0] + 0.25 * facing, at[1] + 0.25), (200, 200, 200), 0.6)


def clap_lines(p: Painter, at: Point) -> None:
    ink = p.colour()
    for angle in (-60, -20, 20, 60):
        a = math.radians(angle - 90)
        p.segment((at[0] + 0.18 * math.cos(a), at[1] + 0.18 * math.sin(a)),
                  (at[0] + 0.35 * math.cos(a), at[1] + 0.35 * math.sin(a)), ink, 0.5)


def table(p: Painter, x0: float, x1: float, top: float) -> None:
    wood = p.colour()
    p.box((x0, top), (x1, top + 0.12), wood)
    p.segment((x0 + 0.1, top), (x0 + 0.1, 1.2), wood, 1.2)
    p.segment((x1 - 0.1, top), (x1 - 0.1, 1.2), wood, 1.2)


def chair(p: Painter, dx: float = 0.0) -> None:
    frame = p.colour()
    p.box((dx - 0.35, 0.08), (dx + 0.55, 0.22), frame)
    p.segment((dx - 0.35, 0.1), (dx - 0.45, -1.0), frame, 1.6)
    p.segment((dx - 0.3, 0.2), (dx - 0.3, 1.2), frame, 1.2)
    p.segment((dx + 0.5, 0.2), (dx + 0.5, 1.2), frame, 1.2)


def bicycle(p: Painter, dx: float = 0.0) -> None:
    metal, tyre = p.colour(), p.colour()
    back, front = (dx - 0.65, 0.8), (dx + 0.95, 0.8)
    for wheel in (back, front):
        p.disc(wheel, 0.48, None, tyre)
        p.disc(wheel, 0.05, tyre)
    crank, seat, bar = (dx + 0.25, 0.75), (dx, 0.05), (dx + 0.7, -0.1)
    for a, b in ((back, crank), (crank, seat), (seat, back), (seat, bar), (bar, crank),
                 (bar, front), (bar, (dx + 0.68, -0.45)), ((dx + 0.55, -0.5), (dx + 0.85, -0.45))):
        p.segment(a, b, metal, 1.0)


def laptop(p: Painter, x0: float, top: float) -> None:
    case = p.colour()
    p.box((x0, top - 0.12), (x0 + 0.7, top - 0.02), case, INK)
    p.polygon(((x0 + 0.7, top - 0.07), (x0 + 0.9, top - 0.77), (x0 + 0.97, top - 0.72),
               (x0 + 0.77, top - 0.02)), case, INK)


def plate(p: Painter, at: Point) -> None:
    p.disc(at, 0.2, p.colour(), INK)
    p.disc((at[0], at[1] - 0.06), 0.08, p.colour())


def bed(p: Painter, lying: bool, dx: float = 0.0) -> None:
    """Under a lying person (drawn in its rotated frame, along the body), or a low bed on the
    floor beside a person."""
    if lying:
        p.box((-0.45, -1.95), (0.45, 1.45), p.colour())
        p.box((-0.35, -1.9), (0.35, -1.2), p.colour(), INK)
    else:
        p.box((dx - 0.1, 0.75), (dx + 1.9, 1.1), p.colour())
        p.box((dx + 1.3, 0.6), (dx + 1.85, 0.8), p.colour(), INK)
        for x in (dx, dx + 1.8):
            p.segment((x, 1.1), (x, 1.25), INK, 0.8)


def blanket(p: Painter) -> None:
    p.box((-0.42, 0.1), (0.42, 1.4), p.colour(), INK)


def clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int,
            hues: tuple[float, float] = ALL_HUES) -> None:
    for _ in range(rng.integers(1, 6)):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
        w, h = rng.uniform(0.05, 0.45, 2) * size
        colour = random_colour(rng, SCENERY_LIGHTNESS, hues)
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.line([x0, y0, x0 + w, y0 + h], fill=colour, width=int(rng.integers(1, 4)))
