"""The `shapes64` data set: 64 × 64 images of coloured shapes with captions, made from a seed.

Everything follows docs/shapes64.md, which fixes how an image looks and how its caption
reads so that generated images can be checked against their prompts by measuring pixels
(see `generator.evaluation.attributes`). Only numpy and Pillow are used here.

The caption grammar lives here both ways: `format_caption` writes captions, `parse_prompt` reads a
caption or a partial prompt back into the attributes it specifies (`PromptSpec`).

Determinism: scene `index` of split `split` under `seed` is drawn from its own
`np.random.default_rng([split stream, seed, index])`; no global RNG and no Python `hash`.

Train / validation separation: the spec asks that the splits share no (caption, image)
pair. Different seeds alone cannot promise that (the number of distinct images is finite),
so every image also falls into one of `VALIDATION_BUCKETS` buckets by a stable hash of what
it shows, invariant to horizontal flips; validation images come only from bucket 0 and
training images never do. A training image, or its mirror image, is therefore never a
validation image.

Command line: `python -m generator.data.shapes64 grid --split train --count 64 --out grid.png`.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# --- The specification's constants -------------------------------------------------------

CANVAS = 64  # image side in pixels
SUPERSAMPLE = 4  # shapes are drawn at 4× (256 × 256) and box-filtered down to 64 × 64
MARGIN = 1  # every shape stays at least this many pixels inside the canvas
JITTER = 3  # integer jitter of a shape's centre, uniform in [-3, 3] on each axis
MIN_GAP = 4  # two objects' bounding boxes stay this many pixels apart along their row/column
SINGLE_OBJECT_PROBABILITY = 0.7
OMIT_PROBABILITY = 0.25  # each optional caption part, independently, in training captions

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 30),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
}
# A style the data set never shows, for the LoRA stage (generator/train/lora.py): each colour word drawn in the next
# colour round the wheel (red → orange → yellow → green → blue → purple → red). It uses only the palette's own RGB
# values, the only colours the built-in autoencoder reproduces (docs/experiments).
HUE_STEP = {"red": "orange", "orange": "yellow", "yellow": "green", "green": "blue", "blue": "purple", "purple": "red"}
PALETTES: dict[str, dict[str, tuple[int, int, int]]] = {
    "shapes64": COLOURS,
    "hue_step": {word: COLOURS[drawn] for word, drawn in HUE_STEP.items()},
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIDES: dict[str, tuple[int, ...]] = {"small": (13, 14, 15), "large": (26, 27, 28, 29, 30)}

# Rows top → bottom and columns left → right, with their centres in pixels.
ROWS: dict[str, int] = {"top": 16, "middle": 32, "bottom": 48}
COLUMNS: dict[str, int] = {"left": 16, "centre": 32, "right": 48}
# A cell is named "{row} {column}", as in the spec's table.
POSITION_PHRASES: dict[str, str] = {
    "top left": "in the top left",
    "top centre": "at the top",
    "top right": "in the top right",
    "middle left": "on the left",
    "middle centre": "in the center",
    "middle right": "on the right",
    "bottom left": "in the bottom left",
    "bottom centre": "at the bottom",
    "bottom right": "in the bottom right",
}
CELLS: tuple[str, ...] = tuple(POSITION_PHRASES)
# Each relation describes the first object relative to the second.
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
HORIZONTAL_RELATIONS = frozenset({"to the left of", "to the right of"})

HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("green", "triangle"), ("purple", "square"), ("orange", "circle")}
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)
TRAINING_PAIRS: tuple[tuple[str, str], ...] = tuple(pair for pair in ALL_PAIRS if pair not in HELD_OUT_PAIRS)

# --- Splits ---------------------------------------------------------------------------------

# The first word of every RNG seed: it keeps the splits' (and prompt sets') random streams apart.
SPLIT_STREAMS: dict[str, int] = {"train": 0, "validation": 1}
PROMPT_SET_STREAMS: dict[str, int] = {"single": 2, "held_out": 3, "relation": 4}
VALIDATION_BUCKETS = 10  # one image in ten (by content hash) is reserved for validation


@dataclass(frozen=True)
class Shape:
    """One object in a scene. `s`, `cx`, `cy` are in 64-pixel units; `cx`, `cy` are multiples of 0.5."""

    colour: str
    shape: str
    size: str  # "small" or "large"
    s: int  # side of the bounding box
    cx: float  # centre of the bounding box
    cy: float
    cell: str  # a key of POSITION_PHRASES, e.g. "top left"

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The bounding box (left, top, right, bottom) in 64-pixel units."""
        half = self.s / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)


@dataclass(frozen=True)
class Scene:
    """What one image shows and its caption. With two objects, `relation` places the first relative to the second."""

    background: str
    objects: tuple[Shape, ...]
    relation: str | None
    caption: str


# --- Drawing scenes -------------------------------------------------------------------------


def _check_split(split: str) -> None:
    if split not in SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLIT_STREAMS)}")


def _check_seed(name: str, value: int) -> None:
    # SeedSequence takes only non-negative integers; say so here rather than deep inside numpy.
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _place(cell: str, s: int, jitter: Sequence[int]) -> tuple[float, float]:
    """Cell centre plus jitter, then the least move that keeps the box ≥ MARGIN px inside the canvas."""
    row, column = cell.split(" ")
    low, high = MARGIN + s / 2, CANVAS - MARGIN - s / 2
    cx = min(max(float(COLUMNS[column] + int(jitter[0])), low), high)
    cy = min(max(float(ROWS[row] + int(jitter[1])), low), high)
    return cx, cy


def _draw_jitter(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(-JITTER, JITTER + 1, size=2)  # (2,) = (x, y)


def _draw_single(rng: np.random.Generator, background: str, pairs: Sequence[tuple[str, str]]) -> Scene:
    colour, shape = pairs[int(rng.integers(len(pairs)))]
    size = ("small", "large")[int(rng.integers(2))]
    s = SIDES[size][int(rng.integers(len(SIDES[size])))]
    cell = CELLS[int(rng.integers(len(CELLS)))]
    cx, cy = _place(cell, s, _draw_jitter(rng))
    return Scene(background, (Shape(colour, shape, size, s, cx, cy, cell),), None, "")


def _gap(first: Shape, second: Shape, relation: str) -> float:
    """Distance between the two bounding boxes along the relation's axis (negative if they overlap)."""
    axis = 0 if relation in HORIZONTAL_RELATIONS else 1
    low, high = sorted((first, second), key=lambda shape: (shape.cx, shape.cy)[axis])
    return high.box[axis] - low.box[axis + 2]


def _draw_two(rng: np.random.Generator, background: str, pairs: Sequence[tuple[str, str]]) -> Scene:
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    line = int(rng.integers(3))  # the row (left/right relations) or column (above/below)
    near, far = ((0, 1), (0, 2), (1, 2))[int(rng.integers(3))]  # positions along that line, near < far
    first_at, second_at = (near, far) if relation in ("to the left of", "above") else (far, near)
    if relation in HORIZONTAL_RELATIONS:
        row = list(ROWS)[line]
        cells = [f"{row} {list(COLUMNS)[first_at]}", f"{row} {list(COLUMNS)[second_at]}"]
    else:
        column = list(COLUMNS)[line]
        cells = [f"{list(ROWS)[first_at]} {column}", f"{list(ROWS)[second_at]} {column}"]

    first_pair = pairs[int(rng.integers(len(pairs)))]
    second_pair = first_pair
    while second_pair == first_pair:  # differ in colour or shape or both
        second_pair = pairs[int(rng.integers(len(pairs)))]
    sides = [SIDES["small"][int(rng.integers(len(SIDES["small"])))] for _ in range(2)]

    while True:  # draw the jitter again until the boxes are MIN_GAP apart along the line
        objects = []
        for (colour, shape), s, cell in zip((first_pair, second_pair), sides, cells):
            cx, cy = _place(cell, s, _draw_jitter(rng))
            objects.append(Shape(colour, shape, "small", s, cx, cy, cell))
        if _gap(objects[0], objects[1], relation) >= MIN_GAP:
            return Scene(background, tuple(objects), relation, "")


def _mirror(shape: Shape) -> Shape:
    row, column = shape.cell.split(" ")
    column = {"left": "right", "right": "left"}.get(column, column)
    return replace(shape, cx=CANVAS - shape.cx, cell=f"{row} {column}")


def _content_key(background: str, objects: Sequence[Shape]) -> str:
    """A canonical text for what an image shows: independent of object order and caption."""
    parts = sorted(f"{o.colour},{o.shape},{o.s},{round(2 * o.cx)},{round(2 * o.cy)}" for o in objects)
    return background + "|" + ";".join(parts)


def validation_bucket(scene: Scene) -> int:
    """The image's bucket in [0, VALIDATION_BUCKETS): a stable hash, equal for an image and its mirror image.

    Validation images come from bucket 0 only and training images never do, so the splits share
    no image at all (hence no (caption, image) pair), even after flip augmentation.
    """
    key = min(
        _content_key(scene.background, scene.objects),
        _content_key(scene.background, [_mirror(o) for o in scene.objects]),
    )
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % VALIDATION_BUCKETS


def _draw_scene(rng: np.random.Generator, split: str) -> Scene:
    pairs = TRAINING_PAIRS if split == "train" else ALL_PAIRS
    want_validation = split == "validation"
    while True:  # rejection keeps the two splits' images disjoint (see the module docstring)
        background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        if rng.random() < SINGLE_OBJECT_PROBABILITY:
            scene = _draw_single(rng, background, pairs)
        else:
            scene = _draw_two(rng, background, pairs)
        if (validation_bucket(scene) == 0) == want_validation:
            return scene


def make_scene(seed: int, index: int, split: str) -> Scene:
    """Scene `index` of `split` under `seed`: the same on every machine and every call.

    Training captions leave parts out at random (the spec's 0.25 omissions); validation
    captions are fully specified, since they serve as evaluation prompts.
    """
    _check_split(split)
    _check_seed("seed", seed)
    _check_seed("index", index)
    rng = np.random.default_rng([SPLIT_STREAMS[split], int(seed), int(index)])
    scene = _draw_scene(rng, split)
    text = caption(scene, rng) if split == "train" else full_caption(scene)
    return replace(scene, caption=text)


# --- Captions -------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(*words: str) -> str:
    """`a small red circle`, `an orange circle`: the article agrees with the first word."""
    return " ".join((_article(words[0]), *words))


def format_caption(scene: Scene, *, size: bool = True, position: bool = True, background: bool = True) -> str:
    """The scene's caption with the chosen optional parts (size and position apply to single objects only)."""
    parts: list[str] = []
    if len(scene.objects) == 1:
        (obj,) = scene.objects
        words = (obj.size, obj.colour, obj.shape) if size else (obj.colour, obj.shape)
        parts.append(_noun_phrase(*words))
        if position:
            parts.append(POSITION_PHRASES[obj.cell])
    elif len(scene.objects) == 2 and scene.relation in RELATIONS:
        first, second = scene.objects
        parts += [_noun_phrase(first.colour, first.shape), scene.relation, _noun_phrase(second.colour, second.shape)]
    else:
        raise ValueError("a scene has one object, or two objects and a relation from RELATIONS")
    if background:
        parts += ["on", _noun_phrase(scene.background, "background")]
    return " ".join(parts)


def full_caption(scene: Scene) -> str:
    """The fully specified caption, nothing left out: the form of every validation prompt."""
    return format_caption(scene)


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """A training caption: with `rng`, size word, position and background phrase each drop out with p = 0.25.

    Two-object captions can drop only the background phrase. Without `rng` the caption is full.
    """
    if rng is None:
        return full_caption(scene)
    if len(scene.objects) == 1:
        keep_size, keep_position, keep_background = (bool(rng.random() >= OMIT_PROBABILITY) for _ in range(3))
        return format_caption(scene, size=keep_size, position=keep_position, background=keep_background)
    return format_caption(scene, background=bool(rng.random() >= OMIT_PROBABILITY))


# --- Parsing captions and prompts: the same grammar read back --------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One object a prompt asks for; `None` means the prompt leaves that attribute open."""

    colour: str
    shape: str
    size: str | None = None
    cell: str | None = None  # a key of POSITION_PHRASES, e.g. "top left"


@dataclass(frozen=True)
class PromptSpec:
    """The attributes a prompt specifies. With two objects, `relation` places the first relative to the second."""

    objects: tuple[ObjectSpec, ...]
    background: str | None = None
    relation: str | None = None


def _alternatives(words: Iterable[str]) -> str:
    # Longest first, so that no alternative stops at a prefix of another.
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


_ARTICLE = r"an?"
_COLOUR = f"(?:{_alternatives(COLOURS)})"
_SHAPE = f"(?:{_alternatives(SHAPES)})"
_BACKGROUND_PHRASE = rf"(?: on {_ARTICLE} (?P<background>{_alternatives(BACKGROUNDS)}) background)?"
_SINGLE = re.compile(
    rf"{_ARTICLE} (?:(?P<size>{_alternatives(SIDES)}) )?(?P<colour>{_COLOUR}) (?P<shape>{_SHAPE})"
    rf"(?: (?P<position>{_alternatives(POSITION_PHRASES.values())}))?{_BACKGROUND_PHRASE}"
)
_TWO = re.compile(
    rf"{_ARTICLE} (?P<colour1>{_COLOUR}) (?P<shape1>{_SHAPE}) (?P<relation>{_alternatives(RELATIONS)}) "
    rf"{_ARTICLE} (?P<colour2>{_COLOUR}) (?P<shape2>{_SHAPE}){_BACKGROUND_PHRASE}"
)
_CELL_OF_PHRASE = {phrase: cell for cell, phrase in POSITION_PHRASES.items()}


def parse_prompt(prompt: str) -> PromptSpec:
    """The attributes a shapes64 caption specifies, full or partial (e.g. `a red circle`).

    Case, repeated spaces and a final full stop are forgiven, and `a`/`an` are not checked,
    since they say nothing about the image; any other text outside the grammar raises.
    """
    text = " ".join(prompt.lower().split()).removesuffix(".")
    if match := _SINGLE.fullmatch(text):
        position = match["position"]
        obj = ObjectSpec(
            match["colour"], match["shape"], match["size"], _CELL_OF_PHRASE[position] if position else None
        )
        return PromptSpec((obj,), match["background"])
    if match := _TWO.fullmatch(text):
        objects = (ObjectSpec(match["colour1"], match["shape1"]), ObjectSpec(match["colour2"], match["shape2"]))
        return PromptSpec(objects, match["background"], match["relation"])
    raise ValueError(
        f"{prompt!r} is not a shapes64 prompt; expected 'a [size] {{colour}} {{shape}} [position phrase] "
        "[on a {background} background]' or 'a {colour} {shape} {relation} a {colour} {shape} "
        "[on a {background} background]' with the words of docs/shapes64.md"
    )


# --- Rendering ------------------------------------------------------------------------------


def palette_prompt(prompt: str, palette: str) -> str:
    """The prompt, in the data set's own colour words, that an image drawn in `palette` fits: "a red circle" drawn in
    hue_step is "an orange circle" (the article follows the new word)."""
    drawn = {word: name for word, rgb in PALETTES[palette].items() for name, own in COLOURS.items() if own == rgb}
    words = "|".join(COLOURS)
    swapped = re.sub(rf"\b({words})\b", lambda m: drawn[m.group(1)], prompt)
    return re.sub(rf"\b(a|an) (small |large )?({words})\b", lambda m: f"{_article((m.group(2) or '') + m.group(3))} "
                  f"{(m.group(2) or '')}{m.group(3)}", swapped)


def render(scene: Scene, palette: str = "shapes64") -> Image.Image:
    """The scene as a 64 × 64 RGB image: drawn at 4× with PIL, then box-filtered down (anti-aliased edges).

    `palette` (PALETTES) is the RGB each colour word is drawn in; "shapes64" is the data set's own."""
    colours = PALETTES[palette]
    big = Image.new("RGB", (CANVAS * SUPERSAMPLE,) * 2, BACKGROUNDS[scene.background])  # (256, 256)
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        # The box [cx - s/2, cx + s/2) at 4× covers the 4s sub-pixels x0 … x0 + 4s - 1; PIL's
        # rectangle and ellipse include their end coordinates. cx is a multiple of 0.5, so x0 is whole.
        x0 = round(SUPERSAMPLE * (obj.cx - obj.s / 2))
        y0 = round(SUPERSAMPLE * (obj.cy - obj.s / 2))
        x1, y1 = x0 + SUPERSAMPLE * obj.s - 1, y0 + SUPERSAMPLE * obj.s - 1
        fill = colours[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif obj.shape == "triangle":
            # The apex (cx, cy - s/2) lies on the line between sub-pixels mid - 1 and mid; a two
            # sub-pixel flat top keeps the triangle mirror-symmetric, so flips stay exact.
            mid = x0 + SUPERSAMPLE * obj.s // 2
            draw.polygon([(mid - 1, y0), (mid, y0), (x1, y1), (x0, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}; allowed: {', '.join(SHAPES)}")
    return big.reduce(SUPERSAMPLE)  # (64, 64), box filter


# --- Flip augmentation ----------------------------------------------------------------------

_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def flip_caption(text: str) -> str:
    """The caption of the mirror image: `left` ↔ `right` in position phrases and relations.

    In the shapes64 grammar these two words occur only there (`in the top left`, `on the right`,
    `to the left of`), so swapping the whole words is exact.
    """
    return _LEFT_RIGHT.sub(lambda match: "right" if match.group(1) == "left" else "left", text)


def flip_scene(scene: Scene) -> Scene:
    """The mirror-image scene: centres at 64 - cx, columns and left/right relations swapped."""
    relation = {"to the left of": "to the right of", "to the right of": "to the left of"}.get(
        scene.relation or "", scene.relation
    )
    return Scene(scene.background, tuple(_mirror(o) for o in scene.objects), relation, flip_caption(scene.caption))


def hflip(image: Image.Image, text: str) -> tuple[Image.Image, str]:
    """Horizontal-flip augmentation: the mirrored image and the caption that still describes it."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flip_caption(text)


# --- Data set and validation prompts --------------------------------------------------------


class Shapes64Dataset:
    """`size` scenes of one split: `dataset[i]` is `(image, caption, scene)`, made on demand (nothing cached)."""

    def __init__(self, split: str, size: int, seed: int = 0) -> None:
        _check_split(split)
        _check_seed("seed", seed)
        if size < 0:
            raise ValueError(f"size must be non-negative, got {size}")
        self.split, self.size, self.seed = split, size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Image.Image, str, Scene]:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} scenes")
        scene = make_scene(self.seed, index % self.size, self.split)
        return render(scene), scene.caption, scene


@dataclass(frozen=True)
class PromptCase:
    """A validation prompt and the scene it asks for; `scene` is one real image of it (`render(scene)`)."""

    prompt: str
    scene: Scene


# The number of distinct fully specified held-out prompts, the smallest of the three sets.
_HELD_OUT_PROMPTS = len(BACKGROUNDS) * len(HELD_OUT_PAIRS) * len(SIDES) * len(CELLS)


def validation_prompt_sets(seed: int = 0, count: int = 64) -> dict[str, list[PromptCase]]:
    """The evaluation prompt sets, `count` distinct fully specified prompts each, from validation images only.

    - `single`: one object of a colour–shape pair seen in training, with size, place and background.
    - `held_out`: the same for the held-out pairs (green triangle, purple square, orange circle),
      which measure whether the model composes attributes it has seen only separately.
    - `relation`: two objects of seen pairs in a relation, with background.
    """
    _check_seed("seed", seed)
    if not 0 <= count <= _HELD_OUT_PROMPTS:
        raise ValueError(f"count must be in [0, {_HELD_OUT_PROMPTS}] (the distinct held-out prompts), got {count}")
    held_out = sorted(HELD_OUT_PAIRS)
    drawers = {
        "single": lambda rng, background: _draw_single(rng, background, TRAINING_PAIRS),
        "held_out": lambda rng, background: _draw_single(rng, background, held_out),
        "relation": lambda rng, background: _draw_two(rng, background, TRAINING_PAIRS),
    }
    sets: dict[str, list[PromptCase]] = {}
    for name, draw in drawers.items():
        rng = np.random.default_rng([PROMPT_SET_STREAMS[name], int(seed)])
        cases: dict[str, PromptCase] = {}
        while len(cases) < count:
            background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
            scene = draw(rng, background)
            if validation_bucket(scene) != 0:
                continue
            prompt = full_caption(scene)
            cases.setdefault(prompt, PromptCase(prompt, replace(scene, caption=prompt)))
        sets[name] = list(cases.values())
    return sets


# --- Command line ---------------------------------------------------------------------------


def sample_grid(split: str, count: int, seed: int = 0, columns: int = 8, scale: int = 2) -> Image.Image:
    """Scenes 0 … count - 1 of a split in a grid, each image enlarged `scale`× with its caption underneath."""
    dataset = Shapes64Dataset(split, count, seed)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=11)
    except (TypeError, OSError, ImportError):  # Pillow built without FreeType: the bitmap font
        font = ImageFont.load_default()
    side = CANVAS * scale
    tile_width = max(side, 176)
    chars_per_line = max(8, tile_width // 6)
    items = [(image, textwrap.wrap(text, chars_per_line) or [""]) for image, text, _ in dataset]
    line_height = 13
    tile_height = side + 4 + line_height * max((len(lines) for _, lines in items), default=1) + 6
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    grid = Image.new("RGB", (columns * tile_width, rows * tile_height + 1), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (image, lines) in enumerate(items):
        left, top = (i % columns) * tile_width, (i // columns) * tile_height + 1
        x = left + (tile_width - side) // 2
        grid.paste(image.resize((side, side), Image.Resampling.NEAREST), (x, top))
        draw.rectangle([x - 1, top - 1, x + side, top + side], outline=(200, 200, 200))  # shows white images' edges
        for j, line in enumerate(lines):
            draw.text((left + 4, top + side + 4 + j * line_height), line, fill=(0, 0, 0), font=font)
    return grid


def main(argv: list[str] | None = None) -> int:
    """`grid`: a sample sheet, to look at what the model is trained on before training it."""
    parser = argparse.ArgumentParser(prog="python -m generator.data.shapes64", description="The shapes64 data set.")
    commands = parser.add_subparsers(dest="command", required=True)
    grid = commands.add_parser("grid", help="write a PNG grid of sample images with their captions")
    grid.add_argument("--split", choices=list(SPLIT_STREAMS), default="train")
    grid.add_argument("--count", type=int, default=64)
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("--columns", type=int, default=8)
    grid.add_argument("--scale", type=int, default=2, help="enlargement of each 64 × 64 image")
    grid.add_argument("--out", type=Path, required=True, help="a .png path")
    args = parser.parse_args(argv)

    if args.count < 1:
        parser.error("--count must be at least 1")
    image = sample_grid(args.split, args.count, seed=args.seed, columns=args.columns, scale=args.scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.count} {args.split} samples (seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
