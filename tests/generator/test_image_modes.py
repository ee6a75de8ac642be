"""img2img, inpainting, variation seeds, the hires fix and the tiled VAE, on tiny models.

Parity: the project's loop against diffusers' StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline
on the same components, seeds and scheduler, in fp32, within one level of 255 per pixel.
"""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
from PIL import Image

from generator import GenerationRequest, TinyModelConfig, batch_key, generate, load_model
from generator.pipeline import decode_latents, encode_pixels, slerp
from generator.pngmeta import read_manifest
from tests.generator.stock import stock_components

PROMPT = "a small red circle in the top left"


@pytest.fixture(scope="module")
def inpainting_model(tmp_path_factory):
    from generator import make_tiny_model

    path = make_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-inpaint", TinyModelConfig(sample_size=32, inpainting=True)
    )
    return load_model(path, device="cpu", dtype="fp32")


def init_image(size=32) -> Image.Image:
    """A picture with structure: a colour gradient and a dark square."""
    y, x = np.mgrid[0:size, 0:size]
    array = np.stack([x * 255 // size, y * 255 // size, 255 - x * 255 // size], axis=-1).astype(np.uint8)
    array[size // 4 : size // 2, size // 4 : size // 2] = 20
    return Image.fromarray(array)


def square_mask(size=32) -> Image.Image:
    array = np.zeros((size, size), dtype=np.uint8)
    array[8:24, 12:28] = 255
    return Image.fromarray(array)


def pixels_of(result) -> np.ndarray:
    return np.stack([np.asarray(image.image) for image in result.images]).astype(int)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpmpp_2m", "unipc"])
def test_img2img_matches_stock_pipeline_within_one_level(tiny_model, scheduler):
    request = GenerationRequest(
        prompt=PROMPT, negative_prompt="blue", steps=6, guidance_scale=5.0, scheduler=scheduler, seed=99,
        num_images=2, init_image=init_image(), strength=0.6,
    )
    ours = pixels_of(generate(tiny_model, [request])[0])

    pipe = StableDiffusionImg2ImgPipeline(**stock_components(tiny_model, scheduler))
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(
        prompt=PROMPT, negative_prompt="blue", image=init_image(), strength=0.6, num_inference_steps=6,
        guidance_scale=5.0, num_images_per_prompt=2,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (99, 100)], output_type="np",
    ).images
    stock = (stock * 255).round().astype(int)

    assert ours.shape == stock.shape == (2, 32, 32, 3)
    assert np.abs(ours[0] - ours[1]).mean() > 1  # two seeds, two images
    assert np.abs(ours - stock).max() <= 1


@pytest.mark.parametrize(("unet", "scheduler", "strength"), [
    ("9-channel", "ddim", 1.0), ("9-channel", "euler", 0.7), ("4-channel", "ddim", 0.8), ("4-channel", "euler", 1.0),
])
def test_inpainting_matches_stock_pipeline_within_one_level(tiny_model, inpainting_model, unet, scheduler, strength):
    model = inpainting_model if unet == "9-channel" else tiny_model
    assert model.unet.config.in_channels == (9 if unet == "9-channel" else 4)
    mask = square_mask()
    request = GenerationRequest(
        prompt=PROMPT, steps=5, guidance_scale=4.0, scheduler=scheduler, seed=5, num_images=2,
        init_image=init_image(), mask_image=mask, mask_blur=0, strength=strength,
    )
    ours = pixels_of(generate(model, [request])[0])

    # One stock call per seed: diffusers encodes a single init image once, with the first image's generator, and
    # repeats it; the engine gives image i its own draws so that it is reproducible from seed + i alone.
    pipe = StableDiffusionInpaintPipeline(**stock_components(model, scheduler))
    pipe.set_progress_bar_config(disable=True)
    stock = np.concatenate([
        pipe(
            prompt=PROMPT, image=init_image(), mask_image=mask, strength=strength, num_inference_steps=5,
            guidance_scale=4.0, height=32, width=32, generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).images
        for seed in (5, 6)
    ])
    stock = (stock * 255).round().astype(int)
    # The engine pastes the kept pixels back from the original (A1111's overlay); diffusers leaves the VAE's
    # round trip there. With a sharp mask the overlay is exactly the mask: compare through it.
    repaint = np.asarray(mask) > 127
    original = np.asarray(init_image()).astype(int)[None]
    assert np.abs(ours - np.where(repaint[None, :, :, None], stock, original)).max() <= 1
    assert np.array_equal(ours[:, ~repaint], np.broadcast_to(original, ours.shape)[:, ~repaint])
    assert np.abs(ours - original)[:, repaint].mean() > 2  # the masked area was repainted
    assert np.abs(ours[0] - ours[1])[repaint].mean() > 1  # two seeds, two fillings


def test_tiled_decode_and_encode_stay_close_to_whole(tiny_model):
    generator = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn((1, 4, 32, 32), generator=generator)  # 64 × 64 pixels
    whole = decode_latents(tiny_model, latents).astype(int)
    # Measured on this random tiny VAE, whose mid-block attention and group norms see the whole image, in levels
    # of 255: 2 × 2 tiles of 48 pixels (24 latents, overlap 12): mean 1.6, max 13; 3 × 3 tiles of 32 pixels: mean
    # 3.9, max 28 (abutting 32-pixel tiles without blending: mean 7.5, max 133). A trained VAE does better; the
    # bounds leave some room for other CPUs' rounding.
    for tile, mean, largest in ((48, 2.5, 20), (32, 5.0, 40)):
        difference = np.abs(whole - decode_latents(tiny_model, latents, tile_size=tile).astype(int))
        assert difference.mean() < mean
        assert difference.max() <= largest

    pixels = torch.from_numpy(whole[0].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    whole_latents = encode_pixels(tiny_model, pixels, None)
    tiled_latents = encode_pixels(tiny_model, pixels, None, tile_size=32)
    # Measured: the mean difference is 0.12 of the latents' mean magnitude (the same random VAE's global encoder).
    assert (whole_latents - tiled_latents).abs().mean() < 0.25 * whole_latents.abs().mean()


def test_tiled_generation_runs_and_records_its_tile(tiny_model):
    request = GenerationRequest(prompt=PROMPT, steps=2, seed=3, width=64, height=64, vae_tile_size=32)
    result = generate(tiny_model, [request])[0]
    assert result.images[0].image.size == (64, 64)
    assert result.images[0].manifest["vae_tile_size"] == 32


def test_subseed_strength_zero_keeps_pixels_and_one_gives_the_subseeds_image(tiny_model):
    base = GenerationRequest(prompt=PROMPT, steps=4, scheduler="ddim", seed=10, num_images=2)
    plain = pixels_of(generate(tiny_model, [base])[0])
    zero = pixels_of(generate(tiny_model, [GenerationRequest(**{**vars(base), "subseed": 500})])[0])
    assert np.array_equal(plain, zero)

    full = generate(tiny_model, [GenerationRequest(**{**vars(base), "subseed": 500, "subseed_strength": 1.0})])[0]
    of_subseed = pixels_of(generate(tiny_model, [GenerationRequest(**{**vars(base), "seed": 500})])[0])
    assert np.array_equal(pixels_of(full), of_subseed)
    assert full.images[1].manifest["subseed"] == 501

    half = pixels_of(
        generate(tiny_model, [GenerationRequest(**{**vars(base), "subseed": 500, "subseed_strength": 0.5})])[0]
    )
    assert not np.array_equal(half, plain) and not np.array_equal(half, of_subseed)


def test_slerp_keeps_the_norm_of_gaussian_noise():
    generator = torch.Generator("cpu").manual_seed(1)
    a, b = torch.randn((2, 4, 16, 16), generator=generator)
    mixed = slerp(0.5, a, b)
    assert abs(mixed.norm() / a.norm() - 1) < 0.05  # a lerp would shrink it by about 1/√2
    assert torch.equal(slerp(0.0, a, b), a) and torch.allclose(slerp(1.0, a, b), b, atol=1e-6)


def test_hires_scale_one_is_a_no_op(tiny_model):
    base = GenerationRequest(prompt=PROMPT, steps=3, seed=4)
    plain = pixels_of(generate(tiny_model, [base])[0])
    off = GenerationRequest(**{**vars(base), "hires_scale": 1.0, "hires_steps": 7, "hires_strength": 0.9})
    assert np.array_equal(plain, pixels_of(generate(tiny_model, [off])[0]))
    assert batch_key(off) == batch_key(base)


@pytest.mark.parametrize("upscaler", ["latent", "latent-nearest", "lanczos"])
def test_hires_fix_makes_the_larger_image_in_one_counted_run(tiny_model, upscaler):
    request = GenerationRequest(
        prompt=PROMPT, steps=4, seed=4, hires_scale=2.0, hires_upscaler=upscaler, hires_steps=6, hires_strength=0.5
    )
    totals, steps = set(), []

    def on_step(state):
        totals.add(state.total)
        steps.append((state.step, tuple(state.latents.shape[-2:])))

    result = generate(tiny_model, [request], callback=on_step)[0]
    assert result.images[0].image.size == (64, 64)
    assert totals == {4 + 3}  # the first pass's 4 steps, then int(6 × 0.5) at 64 × 64
    assert [s for s, _ in steps] == list(range(1, 8))
    assert steps[3][1] == (16, 16) and steps[4][1] == (32, 32)
    assert result.images[0].manifest["hires_upscaler"] == upscaler


def test_cancel_in_the_first_pass_skips_the_hires_pass(tiny_model):
    request = GenerationRequest(prompt=PROMPT, steps=4, seed=4, hires_scale=2.0)
    seen = []

    def on_step(state):
        seen.append(state.step)
        state.cancel(0)

    result = generate(tiny_model, [request], callback=on_step)[0]
    assert result.canceled and result.images == [] and seen == [1]


def test_mode_changes_batch_key_and_mixed_modes_are_not_batched(tiny_model):
    text = GenerationRequest(prompt=PROMPT, width=32, height=32, steps=3, scheduler="ddim")
    image = GenerationRequest(**{**vars(text), "init_image": init_image()})
    inpaint = GenerationRequest(**{**vars(image), "mask_image": square_mask()})
    keys = {batch_key(text), batch_key(image), batch_key(inpaint)}
    assert len(keys) == 3
    assert batch_key(GenerationRequest(**{**vars(image), "strength": 0.5})) != batch_key(image)
    with pytest.raises(ValueError, match="must share"):
        generate(tiny_model, [text, image])


def test_requests_with_different_init_images_batch_row_by_row(tiny_model):
    flipped = init_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    one = GenerationRequest(prompt=PROMPT, steps=4, seed=1, init_image=init_image(), strength=0.5)
    two = GenerationRequest(prompt="a blue square", steps=4, seed=2, init_image=flipped, strength=0.5)
    assert batch_key(one) == batch_key(two)
    together = [pixels_of(r) for r in generate(tiny_model, [one, two])]
    alone = [pixels_of(generate(tiny_model, [r])[0]) for r in (one, two)]
    for a, b in zip(together, alone):
        assert np.abs(a - b).max() <= 1  # batched matmuls may round differently


def test_inpaint_full_res_repaints_only_the_box_and_keeps_the_rest(tiny_model):
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (20, 20, 26, 26))
    request = GenerationRequest(
        prompt=PROMPT, steps=4, seed=8, init_image=init_image(), mask_image=mask, mask_blur=1,
        inpaint_full_res=True, inpaint_full_res_padding=2,
    )
    image = generate(tiny_model, [request])[0].images[0]
    ours, original = np.asarray(image.image).astype(int), np.asarray(init_image()).astype(int)
    assert image.image.size == (32, 32)
    far = np.ones((32, 32), dtype=bool)
    far[16:30, 16:30] = False  # the blurred mask's reach, with room
    assert np.array_equal(ours[far], original[far])
    assert np.abs(ours - original)[21:25, 21:25].mean() > 2


def test_manifest_and_parameters_record_the_inputs(tiny_model):
    request = GenerationRequest(
        prompt=PROMPT, steps=3, seed=8, init_image=init_image(), mask_image=square_mask(), strength=0.5,
        subseed=77, subseed_strength=0.25,
    )
    image = generate(tiny_model, [request])[0].images[0]
    manifest = read_manifest(image.png)
    assert manifest["mode"] == "inpaint" and manifest["strength"] == 0.5 and manifest["mask_blur"] == 4
    assert len(manifest["init_image_sha256"]) == 64 and len(manifest["mask_sha256"]) == 64
    assert manifest["subseed"] == 77 and manifest["subseed_strength"] == 0.25
    parameters = Image.open(__import__("io").BytesIO(image.png)).text["parameters"]
    for key in ("Denoising strength: 0.5", "Mask blur: 4", "Variation seed: 77", "Variation seed strength: 0.25",
                f"Init image hash: {manifest['init_image_sha256'][:10]}", "Mask hash: "):
        assert key in parameters


def test_txt2img_manifest_has_no_image_fields(tiny_model):
    manifest = generate(tiny_model, [GenerationRequest(prompt=PROMPT, steps=2, seed=1)])[0].images[0].manifest
    assert not {"mode", "strength", "init_image_sha256", "subseed", "hires_scale"} & set(manifest)


@pytest.mark.parametrize(("change", "message"), [
    ({"strength": 0.0}, "strength must be a number in"),
    ({"strength": 1.5}, "strength must be a number in"),
    ({"subseed": 1, "subseed_strength": -0.1}, "subseed_strength"),
    ({"hires_scale": 5.0}, "hires_scale"),
    ({"hires_upscaler": "bicubic"}, "hires_upscaler"),
    ({"vae_tile_size": 6}, "vae_tile_size"),
    ({"mask_image": square_mask()}, "a mask needs an init image"),
    ({"init_image": init_image(16)}, "init_image is 16 × 16"),
    ({"init_image": init_image(), "mask_image": square_mask(), "hires_scale": 2.0}, "txt2img and img2img only"),
])
def test_bad_image_fields_are_refused_before_any_step(tiny_model, change, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_model, [GenerationRequest(prompt=PROMPT, steps=2, width=32, height=32, **change)])
