"""The project's loop against diffusers' StableDiffusionPipeline on the same components.

On the CPU in fp32 by default. GENERATOR_TEST_DEVICE and GENERATOR_TEST_DTYPE run the same tests on another device
and dtype (scripts/gpu_check.sh: cuda in fp32 and fp16); each test records its largest pixel difference.
"""

import os

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from generator import GenerationRequest, generate, load_model
from tests.generator.stock import stock_components

DEVICE = os.environ.get("GENERATOR_TEST_DEVICE", "cpu")
DTYPE = os.environ.get("GENERATOR_TEST_DTYPE", "fp32")
# Largest allowed difference from stock, in levels of 255 per pixel. Both paths run the same modules; in fp16 the
# loops' own arithmetic (where each casts, how guidance is combined) rounds differently: on the CPU in fp16 the
# tiny model differs by at most 1 level, in bf16 (3 fewer mantissa bits) by up to 6.
TOLERANCE = {"fp32": 1, "fp16": 4}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    if DTYPE not in TOLERANCE:
        raise ValueError(f"GENERATOR_TEST_DTYPE must be one of {', '.join(TOLERANCE)}, got {DTYPE!r}")
    return load_model(tiny_model_dir, device=DEVICE, dtype=DTYPE)


def stock_pipeline(model, scheduler_name):
    return StableDiffusionPipeline(**stock_components(model, scheduler_name))


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpmpp_2m_karras", "unipc", "ddpm"])
def test_images_match_stock_pipeline_within_one_level(model, scheduler, record_property):
    request = GenerationRequest(
        prompt="a small red circle in the top left",
        negative_prompt="blue",
        steps=4,
        guidance_scale=5.0,
        scheduler=scheduler,
        seed=1234,
        num_images=2,
    )
    ours = generate(model, [request])[0]
    ours_pixels = np.stack([np.asarray(image.image) for image in ours.images]).astype(int)

    pipe = stock_pipeline(model, scheduler)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        num_images_per_prompt=2,
        height=32,
        width=32,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (1234, 1235)],
        output_type="np",
    ).images
    stock_pixels = (stock * 255).round().astype(int)

    assert ours_pixels.shape == stock_pixels.shape == (2, 32, 32, 3)
    assert np.abs(ours_pixels[0] - ours_pixels[1]).mean() > 5  # two seeds, two different images
    difference = int(np.abs(ours_pixels - stock_pixels).max())
    record_property("max_difference_levels", difference)
    assert difference <= TOLERANCE[DTYPE]


def test_guidance_rescale_matches_stock_pipeline(model, record_property):
    request = GenerationRequest(
        prompt="a green square", steps=3, guidance_scale=7.0, guidance_rescale=0.7, scheduler="euler", seed=7
    )
    ours = np.asarray(generate(model, [request])[0].images[0].image).astype(int)
    pipe = stock_pipeline(model, "euler")
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(
        prompt=request.prompt,
        num_inference_steps=3,
        guidance_scale=7.0,
        guidance_rescale=0.7,
        height=32,
        width=32,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
    ).images[0]
    difference = int(np.abs(ours - (stock * 255).round().astype(int)).max())
    record_property("max_difference_levels", difference)
    assert difference <= TOLERANCE[DTYPE]
