"""The evaluation's image sets: the generated images of the validation prompt sets, and the real reference sets.

Prompts: `validation_prompt_sets(seed=prompt_seed, count=prompts)`, the sets `single`, `held_out` and
`relation`; prompt i of a set gets `images_per_prompt` images with seeds 1000 i, 1000 i + 1, … Real set A
holds the rendered scenes of `validation_prompt_sets(seed=s)` for s = 100, 101, … until it has as many images
as were generated; real set B the same from s = 200, 201, …: B vs A is the noise floor of a distance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from generator.data.shapes64 import CANVAS, PromptCase, render, validation_prompt_sets
from generator.loading import LoadedModel
from generator.pipeline import GenerationRequest, batch_key, generate, resolve_request

PROMPT_SETS = ("single", "held_out", "relation")
ONE_OBJECT_SETS = ("single", "held_out")  # the classifier (hence the Inception Score) reads one-object images
PROMPT_SEED = 0
IMAGE_SEED_STRIDE = 1000  # prompt i's images have seeds 1000 i, 1000 i + 1, …
REAL_A_FIRST_SEED = 100
REAL_B_FIRST_SEED = 200


@dataclass
class ImageSet:
    """uint8 images (N, 64, 64, 3), each with its prompt and the prompt set it belongs to."""

    images: np.ndarray
    prompts: list[str]
    sets: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, names: Sequence[str]) -> ImageSet:
        rows = [i for i, name in enumerate(self.sets) if name in names]
        return ImageSet(self.images[rows], [self.prompts[i] for i in rows], [self.sets[i] for i in rows])


@dataclass(frozen=True)
class Sampling:
    """How every image of a run is generated."""

    scheduler: str
    steps: int
    guidance_scale: float
    width: int
    height: int

    def request(self, prompt: str, **fields) -> GenerationRequest:
        """A request for `prompt` with these settings; `fields` sets the rest (seed, num_images, init_image ...)."""
        return GenerationRequest(
            prompt=prompt,
            width=self.width,
            height=self.height,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            scheduler=self.scheduler,
            **fields,
        )


def resolve_sampling(
    model: LoadedModel, *, scheduler: str | None = None, steps: int | None = None, guidance: float | None = None
) -> Sampling:
    """The model's defaults where None, at the shapes64 canvas size; raises ValueError if the model refuses them."""
    probe = resolve_request(
        model,
        GenerationRequest(
            prompt="a red circle",
            width=CANVAS,
            height=CANVAS,
            steps=steps,
            guidance_scale=guidance,
            scheduler=scheduler,
            seed=0,
        ),
    )
    return Sampling(probe.scheduler, probe.steps, probe.guidance_scale, probe.width, probe.height)


def generate_in_batches(
    model: LoadedModel,
    requests: Sequence[GenerationRequest],
    *,
    batch: int = 32,
    log: Callable[[str], None] | None = None,
) -> tuple[list[list[Image.Image]], float]:
    """Each request's images, in request order, and the seconds spent in `generate`.

    Requests that can share a denoising loop (`batch_key`: size, steps, mode, strength, hires ...) go through
    `generate` together, about `batch` images a call; each image has its own seed, so batching changes nothing.
    """
    resolved = [resolve_request(model, request) for request in requests]
    groups: dict[tuple, list[int]] = {}
    for k, request in enumerate(resolved):
        groups.setdefault(batch_key(request), []).append(k)
    chunks = []
    for indices in groups.values():
        chunk: list[int] = []
        for k in indices:
            if chunk and sum(resolved[j].num_images for j in chunk) + resolved[k].num_images > batch:
                chunks.append(chunk)
                chunk = []
            chunk.append(k)
        chunks.append(chunk)
    images: list[list[Image.Image]] = [[] for _ in resolved]
    total, done, seconds = sum(r.num_images for r in resolved), 0, 0.0
    for chunk in chunks:
        started = time.perf_counter()
        results = generate(model, [resolved[k] for k in chunk])
        seconds += time.perf_counter() - started
        for k, result in zip(chunk, results):
            images[k] = [generated.image for generated in result.images]
            done += len(images[k])
        if log is not None:
            log(f"generated {done}/{total} images ({seconds:.1f} s)")
    return images, seconds


def generate_images(
    model: LoadedModel,
    prompt_sets: dict[str, list[PromptCase]],
    images_per_prompt: int,
    sampling: Sampling,
    *,
    batch: int = 32,
    log: Callable[[str], None] | None = None,
    seed_offset: int = 0,
    fields: dict | None = None,
) -> tuple[ImageSet, float]:
    """Every prompt's images, and the seconds spent in `generate` (loading, rendering and metrics excluded).

    Prompt i's images have seeds IMAGE_SEED_STRIDE × i + `seed_offset` + j; `fields` sets other request fields
    (guidance_cutoff, deep_cache_interval …)."""
    requests, sets = [], []
    for name in PROMPT_SETS:
        for i, case in enumerate(prompt_sets[name]):
            requests.append(sampling.request(
                case.prompt, seed=IMAGE_SEED_STRIDE * i + seed_offset, num_images=images_per_prompt, **(fields or {})
            ))
            sets.append(name)
    per_request, seconds = generate_in_batches(model, requests, batch=batch, log=log)
    images, prompts, image_sets = [], [], []
    for request, name, generated in zip(requests, sets, per_request):
        for image in generated:
            images.append(np.asarray(image.convert("RGB")))
            prompts.append(request.prompt)
            image_sets.append(name)
    return ImageSet(np.stack(images), prompts, image_sets), seconds


def real_set(first_seed: int, count: int, prompts: int) -> tuple[ImageSet, list[int]]:
    """`count` rendered validation scenes from `validation_prompt_sets(seed=s)`, s = first_seed, first_seed + 1, …"""
    images, texts, sets, seeds = [], [], [], []
    seed = first_seed
    while len(images) < count:
        for name, cases in validation_prompt_sets(seed=seed, count=prompts).items():
            for case in cases:
                images.append(np.asarray(render(case.scene)))
                texts.append(case.prompt)
                sets.append(name)
        seeds.append(seed)
        seed += 1
    return ImageSet(np.stack(images[:count]), texts[:count], sets[:count]), seeds


def real_sets(count: int, prompts: int) -> tuple[ImageSet, list[int], ImageSet, list[int]]:
    """(real set A, its prompt seeds, real set B, its prompt seeds), `count` images each."""
    real_a, seeds_a = real_set(REAL_A_FIRST_SEED, count, prompts)
    real_b, seeds_b = real_set(REAL_B_FIRST_SEED, count, prompts)
    return real_a, seeds_a, real_b, seeds_b
