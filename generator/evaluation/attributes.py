"""Attribute accuracy: does a 64 × 64 image show what its shapes64 prompt asks for? Measured from pixels only.

`measure(image)` extracts what the image shows (background, then one `Component` per
foreground object: colour, shape, size, cell, centre); `check(image, prompt)` compares that
with the attributes the prompt specifies (`parse_prompt`); attributes a prompt leaves out
are not checked. `accuracy(verdicts)` / `evaluate(pairs)` summarise a list of results.

How each attribute is read (all lengths in pixels of the 64 × 64 image, see docs/shapes64.md):
- background: the palette colour nearest to most of the outer two-pixel ring, which the
  spec keeps free of shapes; the ring's median is the reference colour below, and its
  spread measures the image's noise.
- objects: pixels farther than `FOREGROUND_DISTANCE` (RGB; more on a noisy image) from the
  background, grouped into 8-connected components; specks under `MIN_COMPONENT_AREA` are noise.
- colour: the palette colour nearest to the median of a component's interior pixels.
- coverage: each pixel's fraction of object colour, by projecting it on the line from the
  background colour to the object's measured colour, so anti-aliased edges count in part
  and a tint or a loss of contrast in a generated image does not change the readings.
- size: side = larger of the summed column and row coverage maxima; small is 13–15, large
  26–30, so the threshold is `SIZE_THRESHOLD` = 20.
- shape: an apex-up triangle is the only bottom-heavy shape: the skewness of its mass over
  rows is -2√2/5 ≈ -0.57 (0 for circles and squares), and blur, which rounds corners,
  barely changes it. Otherwise the fill ratio = covered area / (width × height) tells a
  square (≈ 1) from a circle (π/4 ≈ 0.785); anything emptier is `other` (e.g. a triangle
  upside down), which matches no prompt.
- cell: the bounding-box centre (columns/rows at least half covered); cell centres are 16,
  32, 48 with jitter ≤ 3, so the boundaries are at 24 and 40.
- relation: both objects in one row (left/right) or one column (above/below), in the
  prompt's order, as the spec places them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from generator.data.shapes64 import (  # the prompt grammar's parser lives with the captions it parses
    BACKGROUNDS,
    CANVAS,
    COLOURS,
    HORIZONTAL_RELATIONS,
    ObjectSpec,
    PromptSpec,
    parse_prompt,
)

FOREGROUND_DISTANCE = 40.0  # RGB distance from the background; the closest palette pair (purple on gray) is 108
MIN_COMPONENT_AREA = 20.0  # covered pixels; the smallest real object (a side-13 triangle) covers ≈ 84
SIZE_THRESHOLD = 20.0  # between small (13–15) and large (26–30) sides
TRIANGLE_MAX_SKEW = -0.28  # about midway between a triangle's row skewness (-0.57) and 0
SQUARE_MIN_FILL = 0.89  # midway between a circle (π/4) and a square (1)
CIRCLE_MIN_FILL = 0.68  # below a circle's π/4 by as much as a square's 1 is above it
NOISE_FLOOR = 2.5  # standard deviations of the background's noise taken as no coverage
CELL_BOUNDARIES = (24.0, 40.0)  # between the cell centres 16, 32, 48
ROW_NAMES = ("top", "middle", "bottom")
COLUMN_NAMES = ("left", "centre", "right")

_BACKGROUND_RGB = np.array(list(BACKGROUNDS.values()), dtype=np.float64)  # (3 backgrounds, 3)
_COLOUR_RGB = np.array(list(COLOURS.values()), dtype=np.float64)  # (6 colours, 3)


# --- Measuring an image ---------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One foreground object as measured; lengths in pixels of the 64 × 64 image."""

    colour: str
    shape: str  # "circle", "square", "triangle", or "other" when it looks like none of them
    size: str
    cell: str
    cx: float  # bounding-box centre
    cy: float
    width: float
    height: float
    area: float  # covered pixels, partial pixels counted in part
    fill: float  # area / (width × height)
    skew: float  # skewness of the mass over rows; negative when bottom-heavy


@dataclass(frozen=True)
class Measurement:
    """What an image shows: its background and its objects, largest first."""

    background: str
    components: tuple[Component, ...]


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.shape != (CANVAS, CANVAS, 3):
        raise ValueError(f"expected a {CANVAS} × {CANVAS} RGB image, got an array of shape {array.shape}")
    return array.astype(np.float64)  # (64, 64, 3)


def _nearest(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest palette entry for each colour: (N, 3), (P, 3) → (N,)."""
    return np.argmin(((colours[:, None, :] - palette[None, :, :]) ** 2).sum(axis=-1), axis=1)


def _shift(array: np.ndarray, dy: int, dx: int, fill: float | bool) -> np.ndarray:
    """`array` moved by (dy, dx), with `fill` where nothing moves in: (H, W) → (H, W)."""
    out = np.full_like(array, fill)
    h, w = array.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = array[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean (H, W) mask: labels (H, W) with 0 for background, and their count.

    A flood fill in numpy, which keeps scipy out of the dependencies: every pixel starts with
    its own number, takes the smallest number among its neighbours, then follows that number
    to the pixel it names (pointer jumping), until nothing changes; on 64 × 64 images that
    takes a handful of rounds.
    """
    h, w = mask.shape
    none = mask.size + 1  # larger than any pixel number
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(h, w), none)  # (H, W)
    padded = np.full((h + 2, w + 2), none)
    while True:
        padded[1:-1, 1:-1] = labels
        spread = labels.copy()
        for dy, dx in _NEIGHBOURS:
            np.minimum(spread, padded[1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx], out=spread)
        spread = np.where(mask, spread, none)
        for _ in range(2):  # a number always names a pixel of the same component, whose own number is no larger
            spread = np.where(mask, spread.ravel()[np.where(mask, spread, 1) - 1].reshape(h, w), none)
        if np.array_equal(spread, labels):
            break
        labels = spread
    numbers = np.unique(labels[mask])  # (count,) one number per component, ascending
    dense = np.zeros((h, w), dtype=np.int64)
    dense[mask] = np.searchsorted(numbers, labels[mask]) + 1
    return dense, len(numbers)


def _cell(cx: float, cy: float) -> str:
    column = COLUMN_NAMES[int(np.searchsorted(CELL_BOUNDARIES, cx))]
    row = ROW_NAMES[int(np.searchsorted(CELL_BOUNDARIES, cy))]
    return f"{row} {column}"


def _measure_component(
    pixels: np.ndarray, region: np.ndarray, own: np.ndarray, background: np.ndarray, ring_residuals: np.ndarray
) -> Component:
    """Read one object. `pixels` (64, 64, 3); `own` its mask (64, 64); `region` = `own` grown by a pixel;
    `ring_residuals` (N, 3) the border pixels minus `background`, a sample of the image's noise."""
    # Colour: the median of the interior (pixels whose four neighbours are in the object too),
    # so that anti-aliased edges, mixed with the background, do not pull it off.
    interior = own.copy()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        interior &= _shift(own, dy, dx, False)
    core = pixels[interior] if interior.any() else pixels[own]  # (N, 3)
    colour = np.median(core, axis=0)  # (3,)
    colour_index = int(_nearest(colour[None, :], _COLOUR_RGB)[0])

    # Coverage in [0, 1] per pixel: 0 is the background, 1 the object's own (measured) colour.
    direction = colour - background  # (3,)
    if np.linalg.norm(direction) < FOREGROUND_DISTANCE:  # a speck of noise: its median is background
        direction = _COLOUR_RGB[colour_index] - background
    coverage = ((pixels - background) @ direction) / float(direction @ direction)  # (64, 64)
    # Pixel noise, clipped at 0, would add to every sum and maximum below. A dead zone of
    # NOISE_FLOOR standard deviations at both ends removes it and keeps 0.5 at 0.5, so
    # anti-aliased edges still count in part; on a clean image the zone is empty.
    noise = float(np.std(ring_residuals @ direction)) / float(direction @ direction)
    floor = min(NOISE_FLOOR * noise, 0.25)
    coverage = np.where(region, np.clip((coverage - floor) / (1 - 2 * floor), 0.0, 1.0), 0.0)
    column_profile, row_profile = coverage.max(axis=0), coverage.max(axis=1)  # (64,), (64,)
    width, height = float(column_profile.sum()), float(row_profile.sum())
    area = float(coverage.sum())
    fill = area / max(width * height, 1e-9)

    columns, rows = np.flatnonzero(column_profile >= 0.5), np.flatnonzero(row_profile >= 0.5)
    if len(columns) and len(rows):
        cx, cy = (columns[0] + columns[-1] + 1) / 2, (rows[0] + rows[-1] + 1) / 2
    else:  # a faint object, never half covered: fall back on the centre of its pixels
        ys, xs = np.nonzero(own)
        cx, cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5

    ys = np.arange(coverage.shape[0]) + 0.5  # (64,) row centres
    row_mass = coverage.sum(axis=1)  # (64,)
    mean_y = float((ys * row_mass).sum()) / max(area, 1e-9)
    variance = float((((ys - mean_y) ** 2) * row_mass).sum()) / max(area, 1e-9)
    skew = float((((ys - mean_y) ** 3) * row_mass).sum()) / max(area, 1e-9) / max(variance, 1e-9) ** 1.5

    if skew <= TRIANGLE_MAX_SKEW:
        shape = "triangle"
    elif fill >= SQUARE_MIN_FILL:
        shape = "square"
    elif fill >= CIRCLE_MIN_FILL:
        shape = "circle"
    else:
        shape = "other"
    size = "large" if max(width, height) >= SIZE_THRESHOLD else "small"
    return Component(
        list(COLOURS)[colour_index], shape, size, _cell(cx, cy), float(cx), float(cy), width, height, area, fill, skew
    )


def measure(image: Image.Image | np.ndarray) -> Measurement:
    """Background and objects of a 64 × 64 RGB image (PIL image or uint8 array (64, 64, 3))."""
    pixels = _as_array(image)  # (64, 64, 3)

    # 1. Background: majority vote of the outer two-pixel ring.
    ring = np.ones((CANVAS, CANVAS), dtype=bool)
    ring[2:-2, 2:-2] = False
    votes = np.bincount(_nearest(pixels[ring], _BACKGROUND_RGB), minlength=len(BACKGROUNDS))
    background_index = int(np.argmax(votes))
    # The reference colour is the ring's own median (exactly the palette colour on real images),
    # so that a slightly tinted generated background does not all look like foreground.
    background = np.median(pixels[ring][_nearest(pixels[ring], _BACKGROUND_RGB) == background_index], axis=0)
    ring_residuals = pixels[ring] - background  # (N, 3)

    # 2. Foreground: far enough from the background colour, in connected pieces.
    distance = np.sqrt(((pixels - background) ** 2).sum(axis=-1))  # (64, 64)
    # On a noisy image, a fixed threshold would let the noise itself form specks and bridges.
    threshold = max(FOREGROUND_DISTANCE, NOISE_FLOOR * float(np.sqrt((ring_residuals**2).sum(axis=-1).mean())))
    labels, count = _label(distance > threshold)

    # 3. Each piece, grown by a pixel to take in its faint edges but not another piece.
    components = []
    for label in range(1, count + 1):
        own = labels == label
        grown = own.copy()
        for dy, dx in _NEIGHBOURS:
            grown |= _shift(own, dy, dx, False)
        region = grown & ((labels == 0) | own)
        component = _measure_component(pixels, region, own, background, ring_residuals)
        if component.area >= MIN_COMPONENT_AREA:
            components.append(component)
    components.sort(key=lambda c: -c.area)
    return Measurement(list(BACKGROUNDS)[background_index], tuple(components))


# --- Checking an image against a prompt -----------------------------------------------------

# The attributes a verdict can report, in report order.
ATTRIBUTES = ("count", "background", "colour", "shape", "size", "position", "relation")


@dataclass(frozen=True)
class Verdict:
    """Per-attribute results of one (image, prompt); only attributes the prompt specifies appear in `checks`."""

    prompt: str
    correct: bool
    checks: dict[str, bool]
    measurement: Measurement
    matched: tuple[Component | None, ...]  # the component taken for each prompt object


def _object_checks(spec: ObjectSpec, component: Component | None) -> dict[str, bool]:
    found = component is not None
    checks = {
        "colour": found and component.colour == spec.colour,
        "shape": found and component.shape == spec.shape,
    }
    if spec.size is not None:
        checks["size"] = found and component.size == spec.size
    if spec.cell is not None:
        checks["position"] = found and component.cell == spec.cell
    return checks


def _relation_holds(relation: str, first: Component, second: Component) -> bool:
    first_row, first_column = first.cell.split(" ")
    second_row, second_column = second.cell.split(" ")
    if relation in HORIZONTAL_RELATIONS:
        if first_row != second_row:
            return False
        order = COLUMN_NAMES.index(first_column) - COLUMN_NAMES.index(second_column)
        return order < 0 if relation == "to the left of" else order > 0
    if first_column != second_column:
        return False
    order = ROW_NAMES.index(first_row) - ROW_NAMES.index(second_row)
    return order < 0 if relation == "above" else order > 0


def check(image: Image.Image | np.ndarray, prompt: str | PromptSpec) -> Verdict:
    """Whether `image` shows what `prompt` specifies, attribute by attribute.

    Prompt objects are matched to measured objects by the assignment that agrees on the most
    attributes, so a wrong colour on one object does not also fail the other's position.
    """
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    measurement = measure(image)
    components = measurement.components
    n = len(spec.objects)

    # Every assignment of distinct components (or None, when too few were found) to prompt objects.
    candidates: list[Component | None] = list(components) + [None] * max(0, n - len(components))
    best: tuple[Component | None, ...] = (None,) * n
    best_score = -1
    for assignment in itertools.permutations(candidates, n):
        score = sum(sum(_object_checks(obj, comp).values()) for obj, comp in zip(spec.objects, assignment, strict=True))
        if score > best_score:
            best, best_score = assignment, score

    checks: dict[str, bool] = {"count": len(components) == n}
    if spec.background is not None:
        checks["background"] = measurement.background == spec.background
    for obj, comp in zip(spec.objects, best, strict=True):
        for name, ok in _object_checks(obj, comp).items():
            checks[name] = checks.get(name, True) and ok
    if spec.relation is not None:
        first, second = best[0], best[1]
        checks["relation"] = first is not None and second is not None and _relation_holds(spec.relation, first, second)
    text = prompt if isinstance(prompt, str) else repr(prompt)
    return Verdict(text, all(checks.values()), checks, measurement, best)


# --- Reports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccuracyReport:
    """Share of correct images overall and per attribute (over the prompts that specify it)."""

    count: int
    overall: float
    per_attribute: dict[str, float] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)  # how many prompts specified each attribute

    def format(self) -> str:
        """One line, e.g. `overall 0.995 (n=500) | count 1.000 (500) | colour 0.998 (500) | …`."""
        parts = [f"overall {self.overall:.3f} (n={self.count})"]
        parts += [f"{name} {self.per_attribute[name]:.3f} ({self.checked[name]})" for name in self.per_attribute]
        return " | ".join(parts)


def accuracy(verdicts: Sequence[Verdict]) -> AccuracyReport:
    """Summarise verdicts: overall accuracy and per-attribute accuracy."""
    if not verdicts:
        return AccuracyReport(0, 0.0)
    per_attribute, checked = {}, {}
    for name in ATTRIBUTES:
        results = [verdict.checks[name] for verdict in verdicts if name in verdict.checks]
        if results:
            per_attribute[name] = sum(results) / len(results)
            checked[name] = len(results)
    overall = sum(verdict.correct for verdict in verdicts) / len(verdicts)
    return AccuracyReport(len(verdicts), overall, per_attribute, checked)


def evaluate(pairs: Iterable[tuple[Image.Image | np.ndarray, str | PromptSpec]]) -> AccuracyReport:
    """Attribute accuracy over (image, prompt) pairs, e.g. generated images and the prompts they came from."""
    return accuracy([check(image, prompt) for image, prompt in pairs])
