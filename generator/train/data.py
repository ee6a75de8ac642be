"""Training batches drawn from shapes64, with caption-true augmentation.

Scenes are made and rendered on demand (about 0.2 ms an image): an index range of 2^31 scenes
means a run practically never shows the same scene twice. A horizontal flip is the only
augmentation: it mirrors the scene, so the caption is redrawn from the mirrored scene and `left`
and `right` stay true. No crops: a crop could cut a shape or move it to another cell.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from generator.data.shapes64 import (
    CELLS,
    Shapes64Dataset,
    _draw_jitter,
    _place,
    caption,
    flip_scene,
    full_caption,
    make_scene,
    render,
)

SCENES = 2**31 - 1


def hard_negative(scene, rng: np.random.Generator):
    """The scene changed only where its caption's position words are: a single object moved to another cell
    (new jitter), or two objects' colours and shapes swapped (so `A left of B` becomes `B left of A`).
    Every box keeps to the spec, and colour–shape pairs stay together, so held-out pairs stay out."""
    if len(scene.objects) == 1:
        (obj,) = scene.objects
        cell = str(rng.choice([c for c in CELLS if c != obj.cell]))
        cx, cy = _place(cell, obj.s, _draw_jitter(rng))
        objects = (dataclasses.replace(obj, cell=cell, cx=cx, cy=cy),)
    else:
        first, second = scene.objects
        objects = (dataclasses.replace(first, colour=second.colour, shape=second.shape),
                   dataclasses.replace(second, colour=first.colour, shape=first.shape))
    moved = dataclasses.replace(scene, objects=objects)
    return dataclasses.replace(moved, caption=full_caption(moved))


def training_batch(
    rng: np.random.Generator, batch_size: int, data_seed: int, *, flip: bool = True, split: str = "train",
    hard_negatives: float = 0.0, two_object_fraction: float | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """(images in [-1, 1] as (N, 3, 64, 64) float32, training captions with random omissions).

    `two_object_fraction` reweights the sampling, not the data set: each item first decides whether it is a
    two-object scene (with that probability), then draws training-split scenes until one of that kind comes
    up. None keeps the split's own mix (30% two-object scenes, per the spec).

    With `hard_negatives` = f > 0, the first f × N items come in pairs: a scene with its full caption, then
    its `hard_negative` with its full caption, so that a contrastive loss must read the position words.
    """
    images, captions = [], []
    pairs = int(batch_size * hard_negatives) // 2
    for i in range(batch_size - pairs):
        scene = _draw(rng, data_seed, split, two_object_fraction)
        if flip and rng.random() < 0.5:
            scene = flip_scene(scene)
        images.append(np.asarray(render(scene)))
        if i < pairs:
            other = hard_negative(scene, rng)
            captions.append(full_caption(scene))
            images.append(np.asarray(render(other)))
            captions.append(full_caption(other))
        else:
            captions.append(caption(scene, rng))
    return to_tensor(np.stack(images)), captions


def training_scenes(
    rng: np.random.Generator, count: int, data_seed: int, *, flip: bool = True, split: str = "train",
    two_object_fraction: float | None = None,
) -> list:
    """`count` scenes drawn as `training_batch` draws them (each flipped with probability 1/2), not rendered."""
    scenes = []
    for _ in range(count):
        scene = _draw(rng, data_seed, split, two_object_fraction)
        scenes.append(flip_scene(scene) if flip and rng.random() < 0.5 else scene)
    return scenes


def _draw(rng: np.random.Generator, data_seed: int, split: str, two_object_fraction: float | None):
    want = None if two_object_fraction is None else 1 + int(rng.random() < two_object_fraction)
    while True:
        scene = make_scene(data_seed, int(rng.integers(0, SCENES)), split)
        if want is None or len(scene.objects) == want:
            return scene


def validation_pairs(count: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """`count` validation images (uint8) with their full captions."""
    dataset = Shapes64Dataset("validation", count, seed)
    images, captions = [], []
    for image, _, scene in dataset:
        images.append(np.asarray(image))
        captions.append(full_caption(scene))
    return np.stack(images), captions


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] → uint8 (N, H, W, 3)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def grid(images: np.ndarray, columns: int = 8, scale: int = 2) -> Image.Image:
    """uint8 (N, H, W, 3) tiled into one PIL image, each enlarged `scale`× (nearest), 2-pixel gaps."""
    n, h, w, _ = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    gap = 2
    sheet = Image.new("RGB", (columns * (w * scale + gap) + gap, rows * (h * scale + gap) + gap), (220, 220, 220))
    for i, image in enumerate(images):
        tile = Image.fromarray(image).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        sheet.paste(tile, (gap + (i % columns) * (w * scale + gap), gap + (i // columns) * (h * scale + gap)))
    return sheet
