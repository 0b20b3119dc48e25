"""A procedural, seeded, HAR-shaped dataset: stick figures doing the 15 HAR actions.

Every scene is composed of parts (`harclip.pretrain.world` draws them at random): how
many people and their posture, what their arms do and their hands hold, their face, the
objects around. An action is one composition: a phone at the ear is `calling`, riding a
bicycle is `cycling`, two people with arms around each other are `hugging`. Every colour
(background, clutter, clothes, skin, props) is drawn independently of the scene, so the
image's mean colour says nothing about the label; pose jitter, scale, position, mirroring,
clutter and occluders make the task learnable but not trivial.

The stand-in draws every colour from the warm half of the colour wheel (STAND_IN_HUES); its
shifted test split (`generate_shifted`) draws the same actions from the cool half
(SHIFTED_HUES): a style its training images never use and the pretraining world, which draws
from the whole wheel, holds. It is the miniature's ImageNet → ImageNet-R: the pretrained
start has seen both palettes, the fine-tuning data one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from harclip.data.layout import CLASS_NAMES
from harclip.data.synthetic import drawing
from harclip.data.synthetic.drawing import ALL_HUES, SCENERY_LIGHTNESS, Point, random_colour

STAND_IN_HUES = (-0.2, 0.3)
"""The stand-in's palette: magentas, reds, oranges, yellows, yellow-greens."""
SHIFTED_HUES = (0.3, 0.8)
"""The shifted split's: greens, cyans, blues, violets (the rest of the wheel)."""
SHIFTED_STREAM = 0x5817F7
"""Mixed into the shifted split's seed: its scenes never repeat the stand-in's draws."""

# Standing pose in body units (torso length = 1), origin at the hip, y pointing down.
STANDING: dict[str, Point] = {
    "head": (0.0, -1.42), "neck": (0.0, -1.0), "hip": (0.0, 0.0),
    "l_elbow": (-0.28, -0.5), "l_hand": (-0.32, 0.0),
    "r_elbow": (0.28, -0.5), "r_hand": (0.32, 0.0),
    "l_knee": (-0.16, 0.62), "l_foot": (-0.2, 1.22),
    "r_knee": (0.16, 0.62), "r_foot": (0.2, 1.22),
}
POSTURES: dict[str, dict[str, Point]] = {
    "standing": {},
    "striding": {"neck": (0.3, -0.95), "head": (0.45, -1.35), "l_knee": (0.55, 0.35),
                 "l_foot": (0.45, 0.95), "r_knee": (-0.25, 0.55), "r_foot": (-0.75, 0.85)},
    "kicking": {"r_knee": (0.5, 0.4), "r_foot": (0.85, 0.72)},
    "seated": {"l_knee": (0.55, 0.02), "l_foot": (0.5, 0.68), "r_knee": (0.6, 0.06),
               "r_foot": (0.62, 0.7)},
    "lying": {},  # a standing pose, the whole scene turned by 90°
    "riding": {"neck": (0.35, -0.92), "head": (0.5, -1.3), "l_knee": (0.45, 0.2),
               "l_foot": (0.35, 0.85), "r_knee": (0.35, 0.35), "r_foot": (0.15, 0.7)},
}
"""Joint positions each posture moves (legs, and the torso's lean: the arms move with it)."""
ARMS: dict[str, dict[str, Point]] = {
    "down": {},
    "swing": {"l_elbow": (-0.45, -0.55), "l_hand": (-0.75, -0.35), "r_elbow": (0.3, -0.6),
              "r_hand": (0.5, -0.9)},
    "handlebars": {"l_elbow": (0.2, -0.68), "l_hand": (0.25, -0.56), "r_elbow": (0.25, -0.7),
                   "r_hand": (0.37, -0.54)},
    "lap": {"l_elbow": (0.15, -0.45), "l_hand": (0.45, -0.05), "r_elbow": (0.25, -0.45),
            "r_hand": (0.55, 0.0)},
    "phone_ear": {"r_elbow": (0.45, -0.75), "r_hand": (0.3, -1.35)},
    "phone_hands": {"head": (0.05, -1.38), "l_elbow": (-0.3, -0.35), "l_hand": (-0.06, -0.6),
                    "r_elbow": (0.3, -0.35), "r_hand": (0.06, -0.6)},
    "cup_mouth": {"head": (-0.05, -1.42), "r_elbow": (0.45, -0.7), "r_hand": (0.25, -1.25)},
    "food_mouth": {"r_elbow": (0.45, -0.55), "r_hand": (0.15, -1.2), "l_elbow": (0.3, -0.45),
                   "l_hand": (0.6, -0.35)},
    "together": {"l_elbow": (-0.38, -0.5), "l_hand": (-0.02, -0.72), "r_elbow": (0.38, -0.5),
                 "r_hand": (0.02, -0.72)},
    "raised_one": {"l_elbow": (-0.45, -1.3), "l_hand": (-0.65, -1.75), "r_elbow": (0.5, -0.9),
                   "r_hand": (0.9, -1.05)},
    "raised_both": {"l_elbow": (-0.4, -1.35), "l_hand": (-0.55, -1.85), "r_elbow": (0.4, -1.35),
                    "r_hand": (0.55, -1.85)},
    "punching": {"r_elbow": (0.35, -0.85), "r_hand": (0.8, -0.95), "l_elbow": (0.25, -0.6),
                 "l_hand": (0.35, -0.95), "l_knee": (-0.3, 0.55), "l_foot": (-0.5, 1.2)},
    "belly": {"head": (-0.12, -1.4), "neck": (-0.05, -1.0), "l_elbow": (-0.35, -0.45),
              "l_hand": (-0.05, -0.3), "r_elbow": (0.35, -0.45), "r_hand": (0.05, -0.3)},
    "laptop": {"l_elbow": (0.35, -0.45), "l_hand": (0.75, -0.32), "r_elbow": (0.45, -0.5),
               "r_hand": (0.9, -0.33)},
    "around": {"r_elbow": (0.45, -0.75), "r_hand": (0.75, -0.8), "l_elbow": (0.2, -0.55),
               "l_hand": (0.7, -0.55)},
}
"""Arm (and hand-held) poses in the standing frame, facing right; head and neck entries nudge
the head (looking down at a phone, thrown back in a laugh)."""
UPPER_BODY = ("l_elbow", "l_hand", "r_elbow", "r_hand")


@dataclass(frozen=True)
class Person:
    posture: str = "standing"
    arms: str = "down"
    mouth: str = "closed"  # closed | open | hidden (behind a cup, or turned down)
    eyes: str = "open"  # open | closed
    headphones: bool = False


@dataclass(frozen=True)
class Scene:
    """What an image shows: one or two people, how the two relate (apart, one punching the
    other, embracing), and the objects around (chair, table, bicycle, bed, blanket, laptop,
    plate): under a seated, riding or lying person, or beside one."""

    people: tuple[Person, ...]
    together: str = "apart"
    objects: frozenset[str] = field(default_factory=frozenset)


def pose(person: Person) -> dict[str, Point]:
    """The person's joints, facing right with the hip at the origin: its posture's, the arms
    moved with the torso's lean, then its arms' pose."""
    joints = {**STANDING, **POSTURES[person.posture]}
    lean = np.subtract(joints["neck"], STANDING["neck"])
    for name in UPPER_BODY:
        joints[name] = tuple(np.add(STANDING[name], lean))
    for name, point in ARMS[person.arms].items():
        if name in ("head", "neck"):
            joints[name] = tuple(np.add(joints[name], np.subtract(point, STANDING[name])))
        elif name in UPPER_BODY:
            joints[name] = tuple(np.add(point, lean))
        else:  # a stance
            joints[name] = point
    return joints


ACTIONS: dict[str, Scene] = {
    "calling": Scene((Person(arms="phone_ear"),)),
    "clapping": Scene((Person(arms="together"),)),
    "cycling": Scene((Person(posture="riding", arms="handlebars"),), objects=frozenset({
        "bicycle"})),
    "dancing": Scene((Person(posture="kicking", arms="raised_one"),)),
    "drinking": Scene((Person(arms="cup_mouth", mouth="hidden"),)),
    "eating": Scene((Person(posture="seated", arms="food_mouth"),),
                    objects=frozenset({"chair", "table", "plate"})),
    "fighting": Scene((Person(arms="punching", mouth="open"),
                       Person(arms="punching", mouth="open")), together="punching"),
    "hugging": Scene((Person(arms="around"), Person(arms="around")), together="embracing"),
    "laughing": Scene((Person(arms="belly", mouth="open", eyes="closed"),)),
    "listening_to_music": Scene((Person(eyes="closed", headphones=True),)),
    "running": Scene((Person(posture="striding", arms="swing"),)),
    "sitting": Scene((Person(posture="seated", arms="lap"),), objects=frozenset({"chair"})),
    "sleeping": Scene((Person(posture="lying", mouth="hidden", eyes="closed"),),
                      objects=frozenset({"bed", "blanket"})),
    "texting": Scene((Person(arms="phone_hands", mouth="hidden"),)),
    "using_laptop": Scene((Person(posture="seated", arms="laptop"),),
                          objects=frozenset({"chair", "table", "laptop"})),
}
"""The 15 HAR actions as compositions of parts."""
SPACING = {"apart": 0.85, "punching": 0.85, "embracing": 0.3}
"""Half the distance between two people's hips, body units."""


def _hand_props(p: drawing.Painter, person: Person, joints: dict[str, Point],
                facing: float) -> None:
    left, right = joints["l_hand"], joints["r_hand"]
    middle = ((left[0] + right[0]) / 2, (left[1] + right[1]) / 2)
    if person.arms == "phone_ear":
        drawing.phone(p, (right[0], right[1] - 0.03))
    elif person.arms == "phone_hands":
        drawing.phone(p, (middle[0], middle[1] - 0.06), upright=False)
    elif person.arms == "cup_mouth":
        drawing.cup(p, (right[0] + 0.05 * facing, right[1] - 0.03))
    elif person.arms == "food_mouth":
        drawing.fork(p, right, facing)
    elif person.arms == "together":
        drawing.clap_lines(p, middle)


def _objects(p: drawing.Painter, scene: Scene, rng: np.random.Generator,
             in_front: bool) -> None:
    """The objects behind the person (or, `in_front`, those drawn over it), placed for its
    posture: a seated person's chair and table, a rider's bicycle, a sleeper's bed."""
    posture = scene.people[0].posture
    objects, side = scene.objects, 1.0 if rng.random() < 0.5 else -1.0
    if in_front:
        top = -0.18 if posture == "seated" else -0.05
        x0 = 0.5 if posture == "seated" else 0.9
        if "laptop" in objects:
            drawing.laptop(p, x0 + 0.05, top)
        if "plate" in objects:
            drawing.plate(p, (x0 + 0.5, top - 0.12))
        if "blanket" in objects:
            drawing.blanket(p)
        return
    if "bed" in objects:
        drawing.bed(p, lying=posture == "lying", dx=0.6 if side > 0 else -2.5)
    if "bicycle" in objects:
        drawing.bicycle(p, 0.0 if posture == "riding" else 1.5 * side)
    if "chair" in objects:
        drawing.chair(p, 0.0 if posture == "seated" else 1.3 * side)
    if "table" in objects:
        if posture == "seated":
            drawing.table(p, 0.5, 1.6, -0.18)
        else:
            drawing.table(p, 0.8, 1.9, -0.05)


def draw(scene: Scene, size: int, rng: np.random.Generator,
         hues: tuple[float, float] = ALL_HUES) -> Image.Image:
    """Draw `scene`, size×size RGB, with every nuisance drawn from `rng` and every colour from
    the palette `hues`."""
    supersample = 2
    canvas = size * supersample
    image = Image.new("RGB", (canvas, canvas), random_colour(rng, SCENERY_LIGHTNESS, hues))
    drawing.clutter(ImageDraw.Draw(image), rng, canvas, hues)
    unit = canvas * rng.uniform(0.2, 0.26)
    origin = (canvas * rng.uniform(0.4, 0.6), canvas * rng.uniform(0.5, 0.56))
    lying = scene.people[0].posture == "lying"
    painter = drawing.Painter(image, rng, unit, origin, mirror=bool(rng.random() < 0.5),
                              rotation=(90.0 if lying else 0.0) + rng.normal(0, 6),
                              line=max(2, round(unit * rng.uniform(0.13, 0.2))), hues=hues)
    _objects(painter, scene, rng, in_front=False)
    two = len(scene.people) == 2
    for index, person in enumerate(scene.people):
        facing = -1.0 if two and index == 1 else 1.0  # a pair faces each other
        dx = (index * 2 - 1) * SPACING[scene.together] if two else 0.0
        joints = {name: (x * facing + dx, y) for name, (x, y) in pose(person).items()}
        drawing.person(painter, joints, person.mouth, person.eyes, facing, person.headphones)
        _hand_props(painter, person, joints, facing)
    _objects(painter, scene, rng, in_front=True)
    if rng.random() < 0.2:  # a partial occluder in front of everything
        x0, y0 = rng.uniform(0, 0.8, 2) * canvas
        w, h = rng.uniform(0.08, 0.22, 2) * canvas
        ImageDraw.Draw(image).rectangle([x0, y0, x0 + w, y0 + h],
                                        fill=random_colour(rng, SCENERY_LIGHTNESS, hues))
    return image.resize((size, size), Image.Resampling.LANCZOS)


def render(label: str, size: int, rng: np.random.Generator,
           hues: tuple[float, float] = STAND_IN_HUES) -> Image.Image:
    """Draw one image of the HAR action `label` (in the stand-in's palette unless told)."""
    if label not in ACTIONS:
        raise ValueError(f"unknown HAR class {label!r}; expected one of {', '.join(CLASS_NAMES)}")
    return draw(ACTIONS[label], size, rng, hues)


def _balanced(images_per_class: int, size: int, rng: np.random.Generator,
              hues: tuple[float, float]) -> Iterator[tuple[str, Image.Image]]:
    """`images_per_class` rounds of the 15 actions, one image each, in the palette `hues`."""
    for _ in range(images_per_class):
        for label in CLASS_NAMES:
            yield label, render(label, size, rng, hues)


def generate(images_per_class: int, size: int, seed: int) -> Iterator[tuple[str, Image.Image]]:
    """A balanced synthetic HAR set in the stand-in's palette, deterministic for a seed,
    classes interleaved, lazily."""
    return _balanced(images_per_class, size, np.random.default_rng(seed), STAND_IN_HUES)


def generate_shifted(images_per_class: int, size: int, seed: int
                     ) -> Iterator[tuple[str, Image.Image]]:
    """The same actions in the shifted palette (SHIFTED_HUES), from a stream of their own."""
    return _balanced(images_per_class, size, np.random.default_rng([SHIFTED_STREAM, seed]),
                     SHIFTED_HUES)
