import math

import numpy as np
import pytest
import torch

from generator import SCHEDULERS, GenerationRequest, generate, generate_one, read_manifest, resolve_request
from generator.loading import load_model
from generator.pngmeta import PARAMETERS_KEY


def pixels(image):
    return np.asarray(image.image).astype(int)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_runs(tiny_model, name):
    result = generate_one(tiny_model, GenerationRequest(prompt="a red circle", steps=2, scheduler=name, seed=1))
    assert result.images[0].image.size == (32, 32)
    assert result.images[0].manifest["scheduler_settings"]["class"] == SCHEDULERS[name][0]


def test_unknown_scheduler_lists_the_known_ones(tiny_model):
    with pytest.raises(ValueError, match="known schedulers: ddim, ddpm, pndm, euler, euler_a"):
        generate_one(tiny_model, GenerationRequest(prompt="x", scheduler="heun"))


def test_same_seed_gives_identical_png_bytes(tiny_model):
    request = GenerationRequest(prompt="a blue square", steps=3, seed=99, scheduler="euler_a")
    first = generate_one(tiny_model, request).images[0]
    second = generate_one(tiny_model, request).images[0]
    assert first.png == second.png
    other = generate_one(tiny_model, GenerationRequest(prompt="a blue square", steps=3, seed=100)).images[0]
    assert other.png != first.png


def test_png_carries_parameters_and_manifest(tiny_model):
    result = generate_one(
        tiny_model,
        GenerationRequest(prompt="a red circle", negative_prompt="blurry", steps=2, seed=5, num_images=2),
    )
    image = result.images[1]
    manifest = read_manifest(image.png)
    assert manifest == image.manifest
    assert manifest["seed"] == 6 and manifest["request_seed"] == 5
    assert manifest["model"] == {"name": tiny_model.name, "hash": tiny_model.content_hash}
    assert manifest["scheduler"] == "ddim" and manifest["scheduler_settings"]["beta_schedule"] == "scaled_linear"
    assert (manifest["width"], manifest["height"], manifest["steps"]) == (32, 32, 2)
    assert set(manifest["versions"]) == {"torch", "diffusers", "transformers"}
    import io

    from PIL import Image

    text = Image.open(io.BytesIO(image.png)).text[PARAMETERS_KEY]
    assert text.startswith("a red circle\nNegative prompt: blurry\nSteps: 2, Sampler: ddim, CFG scale: 7.5, Seed: 6")


def test_read_manifest_rejects_foreign_pngs(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="no 'generator_manifest'"):
        read_manifest(str(tmp_path / "plain.png"))


def test_batched_requests_equal_separate_runs(tiny_model):
    a = GenerationRequest(prompt="a red circle", steps=3, seed=10, guidance_scale=3.0, scheduler="dpmpp_2m")
    b = GenerationRequest(
        prompt="a green triangle",
        negative_prompt="red",
        steps=3,
        seed=20,
        num_images=2,
        guidance_scale=9.0,
        scheduler="dpmpp_2m",
    )
    batched = generate(tiny_model, [a, b])
    separate = [generate_one(tiny_model, a), generate_one(tiny_model, b)]
    for together, alone in zip(batched, separate):
        assert [i.seed for i in together.images] == [i.seed for i in alone.images]
        for x, y in zip(together.images, alone.images):
            assert np.abs(pixels(x) - pixels(y)).max() <= 1


def test_incompatible_requests_are_not_batched(tiny_model):
    with pytest.raises(ValueError, match="must share width, height, steps and scheduler"):
        generate(tiny_model, [GenerationRequest(prompt="a", steps=2), GenerationRequest(prompt="b", steps=3)])


def test_each_image_has_its_own_seed(tiny_model):
    pair = generate_one(tiny_model, GenerationRequest(prompt="a red circle", steps=2, seed=3, num_images=2))
    single = generate_one(tiny_model, GenerationRequest(prompt="a red circle", steps=2, seed=4))
    assert [i.seed for i in pair.images] == [3, 4]
    assert np.abs(pixels(pair.images[1]) - pixels(single.images[0])).max() <= 1


def test_any_size_that_is_a_multiple_of_the_vae_factor(tiny_model):
    image = generate_one(tiny_model, GenerationRequest(prompt="x", width=48, height=20, steps=1, seed=0)).images[0]
    assert image.image.size == (48, 20) and (image.width, image.height) == (48, 20)


def test_callback_reports_progress_previews_and_latents(tiny_model):
    seen = []

    def on_step(state):
        previews = state.preview_images()
        seen.append((state.step, state.total, tuple(state.latents.shape), previews[0].size, len(previews)))

    generate_one(tiny_model, GenerationRequest(prompt="x", steps=3, seed=0, num_images=2), callback=on_step)
    assert seen == [(s, 3, (2, 4, 16, 16), (16, 16), 2) for s in (1, 2, 3)]


class LinearEncoderVAE:
    """Stands in for a trained VAE: latents are a known linear map of 2×2-pooled RGB."""

    def __init__(self):
        self.mix = torch.tensor([[0.5, -0.2, 0.1], [0.1, 0.6, -0.3], [-0.2, 0.1, 0.7], [0.3, 0.3, 0.3]])  # (C, 3)
        self.config = type("Config", (), {"scaling_factor": 0.5, "block_out_channels": (8, 8)})()

    def encode(self, image):
        pooled = torch.nn.functional.avg_pool2d(image, 2)  # (1, 3, h, w)
        latents = torch.einsum("cr,brhw->bchw", self.mix, pooled) + 0.1
        dist = type("Dist", (), {"mode": lambda self: latents})()
        return type("Out", (), {"latent_dist": dist})()


def test_preview_recovers_colours_from_a_linear_latent_space(tiny_model):
    from dataclasses import replace

    from generator.pipeline import latents_to_preview

    model = replace(tiny_model, vae=LinearEncoderVAE(), cache={})
    colours = torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(123)) * 2 - 1
    image = colours.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # (1, 3, 32, 32)
    latents = model.vae.encode(image).latent_dist.mode() * model.vae.config.scaling_factor
    preview = np.asarray(latents_to_preview(model, latents)[0]).astype(float)  # (16, 16, 3)
    target = (colours[0].permute(1, 2, 0).numpy() + 1) * 127.5
    assert np.abs(preview - target).max() <= 1.0


def test_cancel_stops_the_loop_and_returns_no_images(tiny_model):
    steps_run = []

    def cancel_at_two(state):
        steps_run.append(state.step)
        if state.step == 2:
            state.cancel()

    result = generate_one(tiny_model, GenerationRequest(prompt="x", steps=5, seed=0), callback=cancel_at_two)
    assert steps_run == [1, 2]
    assert result.canceled and result.images == []


def test_cancel_one_request_of_a_batch(tiny_model):
    def cancel_first(state):
        state.cancel(0)

    a, b = GenerationRequest(prompt="a", steps=2, seed=1), GenerationRequest(prompt="b", steps=2, seed=2)
    first, second = generate(tiny_model, [a, b], callback=cancel_first)
    assert first.canceled and first.images == []
    assert not second.canceled and len(second.images) == 1


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"width": 33}, "width must be a multiple of 2"),
        ({"height": 0}, "height must be a multiple of 2"),
        ({"steps": 0}, "steps must be an integer from 1 to 1000"),
        ({"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
        ({"guidance_scale": math.nan}, "guidance_scale must be a finite number"),
        ({"guidance_rescale": 1.5}, "guidance_rescale must be a number from 0 to 1"),
        ({"prompt": "   "}, "prompt must be a non-empty string"),
        ({"prompt": "red " * 601}, "prompt is 601 tokens long, 9 windows of 75"),
        ({"num_images": 0}, "num_images must be an integer from 1 to 16"),
        ({"num_images": 17}, "num_images must be an integer from 1 to 16"),
        ({"seed": -1}, "seed must be an integer from 0"),
        ({"scheduler": "nope"}, "known schedulers"),
        ({"scheduler": "lcm", "steps": 60}, "scheduler 'lcm' cannot run 60 steps"),
        ({"scheduler": "ddim", "steps": 1000}, "scheduler 'ddim' cannot run 1000 steps: its timesteps would pass"),
    ],
)
def test_bad_input_raises_before_compute(tiny_model, monkeypatch, fields, message):
    def no_compute(*args, **kwargs):
        raise AssertionError("the UNet ran")

    monkeypatch.setattr(tiny_model.unet, "forward", no_compute)
    with pytest.raises(ValueError, match=message):
        generate_one(tiny_model, GenerationRequest(**{"prompt": "a red circle", **fields}))


def test_defaults_and_drawn_seed_are_resolved(tiny_model):
    resolved = resolve_request(tiny_model, GenerationRequest(prompt="x"))
    assert (resolved.width, resolved.height, resolved.steps, resolved.scheduler) == (32, 32, 30, "ddim")
    assert isinstance(resolved.seed, int) and 0 <= resolved.seed < 2**32


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_runs_close_to_fp32(tiny_model_dir, tiny_model, dtype):
    request = GenerationRequest(prompt="a red circle", steps=2, seed=1, scheduler="euler")
    half = generate_one(load_model(tiny_model_dir, dtype=dtype), request).images[0]
    full = generate_one(tiny_model, request).images[0]
    assert np.abs(pixels(half) - pixels(full)).mean() < 12
