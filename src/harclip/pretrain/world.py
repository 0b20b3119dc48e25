"""The captioned synthetic world the tiny CLIP and SigLIP models are pretrained on: the part of
the web that CLIP learns from, in miniature.

Each scene is composed of parts drawn independently of one another (the HAR stand-in's
`harclip.data.synthetic.scenes` draws them): one or two people, each one's posture, what the
arms do and the hands hold, the face, headphones, the objects around. Each image gets
captions written from its parts, in several phrasings ("two people, one punching the other",
"a person lying on a bed with closed eyes"). The words teach parts; the 15 action names never
appear (ACTION_WORDS), and most scenes are none of the 15 actions. Its random streams are
seeded apart from the HAR stand-in's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
from PIL import Image

from harclip.data.synthetic.scenes import Person, Scene, draw

WORLD_DOMAIN = 0x5EED_0F_3041D
"""Mixed into every seed (numpy SeedSequence entropy): the world's streams never meet the HAR
stand-in's `default_rng(seed)`."""
ACTION_WORDS = re.compile(r"\b(call|clap|cycl|danc|drink|eat|fight|hug|laugh|listen|music|"
                          r"run|sit|sleep|text|using)\w*", re.IGNORECASE)
"""The 15 HAR action names (and their other forms): never in a caption."""

# What a caption may say of each part; one phrasing is drawn per caption.
POSTURE_WORDS = {
    "standing": ("standing", "standing upright", "on their feet"),
    "striding": ("striding with long steps", "in mid stride", "taking a long stride"),
    "kicking": ("with one leg kicked out", "kicking one leg up"),
    "seated": ("seated on a chair", "on a chair"),
    "lying_bed": ("lying on a bed", "lying in bed"),
    "lying_floor": ("lying on the floor", "lying flat on the ground"),
    "riding": ("riding a bicycle", "on a bicycle", "pedalling a bike"),
}
ARMS_WORDS = {
    "down": ("", "with arms down"),
    "swing": ("with arms swinging", ""),
    "handlebars": ("with hands on the handlebars", ""),
    "lap": ("with hands on the lap", "hands resting on the knees"),
    "phone_ear": ("holding a phone to the ear", "with a phone at the ear"),
    "phone_hands": ("holding a phone in both hands", "looking down at a phone in both hands"),
    "cup_mouth": ("holding a cup to the mouth", "with a cup at the lips"),
    "food_mouth": ("lifting food to the mouth with a fork", "with a fork at the mouth"),
    "together": ("with both hands together", "hands joined in front of the chest"),
    "raised_one": ("with one arm raised high", "one arm up in the air"),
    "raised_both": ("with both arms raised", "arms up in the air"),
    "punching": ("throwing a punch", "with a fist thrust forward"),
    "belly": ("with hands on the belly", "holding the belly"),
    "laptop": ("with hands on a laptop", "typing on a laptop keyboard"),
}
FACE_WORDS = {"mouth_open": ("with an open mouth", "mouth wide open"),
              "eyes_closed": ("with closed eyes", "eyes shut"),
              "headphones": ("wearing headphones", "with headphones on")}
BESIDE_WORDS = {"bicycle": ("next to a bicycle", "beside a bike"),
                "chair": ("beside a chair", "next to an empty chair"),
                "table": ("at a table", "by a table"), "bed": ("beside a bed", "near a bed")}
PAIR_WORDS = {"punching": ("two people, one punching the other", "two people trading punches"),
              "embracing": ("two people with arms around each other",
                            "two people in an embrace")}
STANDING_ARMS = ("down", "phone_ear", "phone_hands", "cup_mouth", "food_mouth", "together",
                 "raised_one", "raised_both", "punching", "belly")
SEATED_ARMS = ("lap", "phone_ear", "phone_hands", "cup_mouth", "food_mouth", "together",
               "raised_one", "belly", "laptop")
POSTURE_ODDS = {"standing": 0.3, "striding": 0.12, "kicking": 0.08, "seated": 0.2,
                "lying": 0.15, "riding": 0.15}
MAX_TOKENS = 22
"""A caption fits the tiny models' 24-token context with its start and end tokens."""


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _face(rng: np.random.Generator, hidden: bool = False) -> dict:
    mouth = "hidden" if hidden else ("open" if rng.random() < 0.3 else "closed")
    return {"mouth": mouth, "eyes": "closed" if rng.random() < 0.3 else "open",
            "headphones": bool(rng.random() < 0.15)}


def sample_scene(rng: np.random.Generator) -> Scene:
    """One scene of independently drawn parts (each part's odds, not the actions', decide)."""
    if rng.random() < 0.2:  # two people
        together = _pick(rng, ("punching", "embracing", "apart"))
        arms = {"punching": ("punching", "punching"), "embracing": ("around", "around"),
                "apart": ("down", _pick(rng, STANDING_ARMS))}[together]
        return Scene(tuple(Person(arms=a, **_face(rng)) for a in arms), together)
    posture = rng.choice(list(POSTURE_ODDS), p=list(POSTURE_ODDS.values()))
    objects: set[str] = set()
    if posture == "riding":
        arms = "handlebars" if rng.random() < 0.6 else \
            _pick(rng, ("phone_ear", "cup_mouth", "raised_one"))
        objects.add("bicycle")
    elif posture == "lying":
        arms = "down"
        if rng.random() < 0.7:
            objects |= {"bed", "blanket"} if rng.random() < 0.6 else {"bed"}
    elif posture == "seated":
        arms = _pick(rng, SEATED_ARMS)
        objects.add("chair")
        if arms == "laptop" or rng.random() < 0.4:
            objects.add("table")
    else:
        arms = "swing" if posture == "striding" and rng.random() < 0.5 else \
            _pick(rng, STANDING_ARMS)
    if arms == "laptop" or ("table" in objects and rng.random() < 0.3):
        objects.add("laptop" if arms == "laptop" else _pick(rng, ("laptop", "plate")))
    if posture in ("standing", "striding", "kicking", "seated") and rng.random() < 0.3:
        objects.add(_pick(rng, [o for o in BESIDE_WORDS if o not in objects]))
    hidden = arms in ("cup_mouth", "phone_hands") or (posture == "lying" and rng.random() < 0.5)
    return Scene((Person(posture=posture, arms=arms, **_face(rng, hidden)),), "apart",
                 frozenset(objects))


def _person_words(person: Person, rng: np.random.Generator) -> list[str]:
    words = [_pick(rng, ARMS_WORDS[person.arms])]
    if person.headphones:
        words.append(_pick(rng, FACE_WORDS["headphones"]))
    if person.mouth == "open":
        words.append(_pick(rng, FACE_WORDS["mouth_open"]))
    if person.eyes == "closed":
        words.append(_pick(rng, FACE_WORDS["eyes_closed"]))
    return [w for w in words if w]


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One phrasing of what the scene shows, built from its parts in a random order."""
    if len(scene.people) == 2:
        if scene.together in PAIR_WORDS:
            return _pick(rng, PAIR_WORDS[scene.together])
        other = _person_words(scene.people[1], rng)
        return "two people standing" + (f", one {other[0]}" if other else " side by side")
    person = scene.people[0]
    posture = person.posture
    if posture == "lying":
        posture = "lying_bed" if "bed" in scene.objects else "lying_floor"
    clauses = _person_words(person, rng)
    if "blanket" in scene.objects:
        clauses.append("under a blanket")
    if person.posture == "seated" and "table" in scene.objects:
        clauses.append(_pick(rng, ("at a table", "by a table")))
    clauses += [_pick(rng, words) for name, words in BESIDE_WORDS.items()
                if name in scene.objects and not _under(name, person.posture)]
    clauses += [f"with a {thing} on the table" for thing in ("plate",)
                if thing in scene.objects]
    rng.shuffle(clauses)
    subject = _pick(rng, ("a person", "a photo of a person", "someone"))
    return " ".join([subject, _pick(rng, POSTURE_WORDS[posture]), *clauses])


def _under(thing: str, posture: str) -> bool:
    """Whether the object is the one the posture uses (said by the posture's own words)."""
    return {"bicycle": "riding", "chair": "seated", "bed": "lying",
            "table": "seated"}.get(thing) == posture


def captions(scene: Scene, rng: np.random.Generator, count: int, tokenizer) -> list[str]:
    """`count` phrasings that fit the context (shorter ones are drawn until they do)."""
    found: list[str] = []
    while len(found) < count:
        text = caption(scene, rng)
        if int((tokenizer([text]) != 0).sum()) <= MAX_TOKENS + 2:
            found.append(text)
    return found


def world_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([WORLD_DOMAIN, seed])


def generate_world(count: int, size: int, seed: int, phrasings: int, tokenizer
                   ) -> Iterator[tuple[Scene, Image.Image, list[str]]]:
    """`count` scenes, each drawn at `size` px with `phrasings` captions, deterministic for a
    seed, lazily."""
    rng = world_rng(seed)
    for _ in range(count):
        scene = sample_scene(rng)
        yield scene, draw(scene, size, rng), captions(scene, rng, phrasings, tokenizer)
