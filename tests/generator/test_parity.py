"""The project's loop against diffusers' StableDiffusionPipeline on the same components."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from generator import GenerationRequest, generate
from tests.generator.stock import stock_components


def stock_pipeline(model, scheduler_name):
    return StableDiffusionPipeline(**stock_components(model, scheduler_name))


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpmpp_2m_karras", "unipc", "ddpm"])
def test_images_match_stock_pipeline_within_one_level(tiny_model, scheduler):
    request = GenerationRequest(
        prompt="a small red circle in the top left",
        negative_prompt="blue",
        steps=4,
        guidance_scale=5.0,
        scheduler=scheduler,
        seed=1234,
        num_images=2,
    )
    ours = generate(tiny_model, [request])[0]
    ours_pixels = np.stack([np.asarray(image.image) for image in ours.images]).astype(int)

    pipe = stock_pipeline(tiny_model, scheduler)
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
    assert np.abs(ours_pixels - stock_pixels).max() <= 1


def test_guidance_rescale_matches_stock_pipeline(tiny_model):
    request = GenerationRequest(
        prompt="a green square", steps=3, guidance_scale=7.0, guidance_rescale=0.7, scheduler="euler", seed=7
    )
    ours = np.asarray(generate(tiny_model, [request])[0].images[0].image).astype(int)
    pipe = stock_pipeline(tiny_model, "euler")
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
    assert np.abs(ours - (stock * 255).round().astype(int)).max() <= 1
