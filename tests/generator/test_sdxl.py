"""SDXL on a tiny random SDXL folder: the project's loop against diffusers' StableDiffusionXLPipeline and its img2img
and inpaint pipelines on the same components, seeds and scheduler, in fp32, within one level of 255 per pixel; and
SDXL through batching, callbacks, fewer evaluations, the fast path and the hires fix.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from generator import pipeline
from generator.deepcache import unet_full, unet_shallow
from generator.fastpath import Bucket, optimize
from generator.loading import load_model
from generator.lora import LoraSpec
from generator.model_info import ModelLoadError, check_model_folder, read_model_info
from generator.pipeline import GenerationRequest, encode_prompts_pooled, generate, generate_one
from generator.schedulers import make_scheduler
from generator.tiny import TinySDXLConfig, make_tiny_sdxl
from tests.generator.test_image_modes import init_image, square_mask

PROMPT = "a small red circle in the top left"


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return make_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl", TinySDXLConfig(sample_size=32))


@pytest.fixture(scope="module")
def sdxl(sdxl_dir):
    return load_model(sdxl_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def sdxl_inpainting(tmp_path_factory):
    path = make_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl-inpaint", TinySDXLConfig(inpainting=True))
    return load_model(path, device="cpu", dtype="fp32")


def stock_components(model, scheduler_name: str) -> dict:
    """Keyword arguments for `StableDiffusionXL*Pipeline(...)` on `model`'s own modules, with a fresh scheduler."""
    return dict(
        vae=model.vae,
        text_encoder=model.text_encoder,
        text_encoder_2=model.text_encoder_2,
        tokenizer=model.tokenizer,
        tokenizer_2=model.tokenizer_2,
        unet=model.unet,
        scheduler=make_scheduler(scheduler_name, model.scheduler_config),
        add_watermarker=False,
    )


def pixels_of(result) -> np.ndarray:
    return np.stack([np.asarray(image.image) for image in result.images]).astype(int)


def levels(stock: np.ndarray) -> np.ndarray:
    return (stock * 255).round().astype(int)


def test_tiny_sdxl_is_a_folder_diffusers_and_the_loader_read(sdxl_dir, sdxl):
    stock = StableDiffusionXLPipeline.from_pretrained(sdxl_dir, local_files_only=True, add_watermarker=False)
    assert type(stock.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert stock.unet.config.addition_embed_type == "text_time"
    assert stock.unet.config.cross_attention_dim == 32 + 64  # both encoders' widths side by side
    assert stock.tokenizer_2.pad_token == "!" and stock.tokenizer.pad_token == "<|endoftext|>"
    assert check_model_folder(sdxl_dir) == sdxl_dir
    info = read_model_info(sdxl_dir)
    assert info.sdxl and (info.defaults.width, info.defaults.height) == (32, 32)
    assert info.defaults.scheduler == "euler" and info.defaults.guidance_scale == 5.0
    assert sdxl.is_sdxl and sdxl.pipeline_config["force_zeros_for_empty_prompt"]


def test_a_folder_missing_its_second_text_encoder_is_refused(sdxl_dir, tmp_path):
    import shutil

    broken = shutil.copytree(sdxl_dir, tmp_path / "broken")
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(ModelLoadError, match="missing: text_encoder_2/"):
        check_model_folder(broken)


@pytest.mark.parametrize(("scheduler", "negative"), [("euler", "blue"), ("euler", ""), ("euler_a", "blue")])
def test_txt2img_matches_stock_pipeline_within_one_level(sdxl, scheduler, negative):
    # 48 × 32: time ids read (height, width); a swap would show
    request = GenerationRequest(
        prompt=PROMPT, negative_prompt=negative, width=48, height=32, steps=3, guidance_scale=5.0,
        scheduler=scheduler, seed=1234, num_images=2,
    )
    ours = pixels_of(generate(sdxl, [request])[0])

    pipe = StableDiffusionXLPipeline(**stock_components(sdxl, scheduler))
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(
        prompt=PROMPT,
        negative_prompt=negative or None,  # None: diffusers' zeros (force_zeros_for_empty_prompt)
        num_inference_steps=3, guidance_scale=5.0, num_images_per_prompt=2, height=32, width=48,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (1234, 1235)], output_type="np",
    ).images

    assert ours.shape == (2, 32, 48, 3)
    assert np.abs(ours[0] - ours[1]).mean() > 5  # two seeds, two images
    assert np.abs(ours - levels(stock)).max() <= 1


def test_empty_negative_prompt_is_zeros_only_where_model_index_says(sdxl):
    request = GenerationRequest(prompt=PROMPT, steps=2, guidance_scale=5.0, seed=3)
    zeros = pixels_of(generate_one(sdxl, request))
    sdxl.pipeline_config["force_zeros_for_empty_prompt"] = False
    try:
        encoded = pixels_of(generate_one(sdxl, request))
    finally:
        sdxl.pipeline_config["force_zeros_for_empty_prompt"] = True
    assert np.abs(zeros - encoded).max() > 1


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_img2img_matches_stock_pipeline_within_one_level(sdxl, scheduler):
    request = GenerationRequest(
        prompt=PROMPT, negative_prompt="blue", steps=4, guidance_scale=5.0, scheduler=scheduler, seed=99,
        num_images=2, init_image=init_image(), strength=0.6,
    )
    ours = pixels_of(generate(sdxl, [request])[0])

    pipe = StableDiffusionXLImg2ImgPipeline(**stock_components(sdxl, scheduler))
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(
        prompt=PROMPT, negative_prompt="blue", image=init_image(), strength=0.6, num_inference_steps=4,
        guidance_scale=5.0, num_images_per_prompt=2,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (99, 100)], output_type="np",
    ).images

    assert ours.shape == (2, 32, 32, 3)
    assert np.abs(ours[0] - ours[1]).mean() > 1
    assert np.abs(ours - levels(stock)).max() <= 1


@pytest.mark.parametrize(("unet", "scheduler", "strength"), [("4-channel", "euler", 1.0), ("9-channel", "ddim", 0.7)])
def test_inpainting_matches_stock_pipeline_within_one_level(sdxl, sdxl_inpainting, unet, scheduler, strength):
    model = sdxl_inpainting if unet == "9-channel" else sdxl
    mask = square_mask()
    request = GenerationRequest(
        prompt=PROMPT, steps=4, guidance_scale=4.0, scheduler=scheduler, seed=5, num_images=2,
        init_image=init_image(), mask_image=mask, mask_blur=0, strength=strength,
    )
    ours = pixels_of(generate(model, [request])[0])

    pipe = StableDiffusionXLInpaintPipeline(**stock_components(model, scheduler))
    pipe.set_progress_bar_config(disable=True)
    stock = np.concatenate([  # one call per seed, as tests/generator/test_image_modes.py explains
        pipe(
            prompt=PROMPT, image=init_image(), mask_image=mask, strength=strength, num_inference_steps=4,
            guidance_scale=4.0, height=32, width=32, generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).images
        for seed in (5, 6)
    ])
    # The kept pixels are pasted back from the original; with a sharp mask, compare through it.
    repaint = np.asarray(mask) > 127
    original = np.asarray(init_image()).astype(int)[None]
    assert ours.shape == (2, 32, 32, 3)
    assert np.abs(ours - np.where(repaint[None, :, :, None], levels(stock), original)).max() <= 1
    assert np.abs(ours - original)[:, repaint].mean() > 2


def test_batched_requests_equal_separate_runs(sdxl):
    a = GenerationRequest(prompt="a red circle", steps=3, seed=10, guidance_scale=3.0, scheduler="euler")
    b = GenerationRequest(
        prompt="a green triangle", negative_prompt="red", steps=3, seed=20, num_images=2, guidance_scale=9.0,
        scheduler="euler",
    )
    batched = generate(sdxl, [a, b])  # a's empty negative is zeros, b's is encoded: row by row
    for together, alone in zip(batched, [generate_one(sdxl, a), generate_one(sdxl, b)]):
        assert [i.seed for i in together.images] == [i.seed for i in alone.images]
        assert np.abs(pixels_of(together) - pixels_of(alone)).max() <= 1


def test_callback_is_called_every_step(sdxl):
    seen = []

    def on_step(state):
        seen.append((state.step, state.total, tuple(state.latents.shape), state.prompt_embeds.shape[-1]))

    result = generate_one(sdxl, GenerationRequest(prompt=PROMPT, steps=3, seed=0, num_images=2), callback=on_step)
    assert seen == [(s, 3, (2, 4, 16, 16), 96) for s in (1, 2, 3)]
    manifest = result.images[0].manifest
    assert manifest["model"]["hash"] == sdxl.content_hash and manifest["prompt"] == PROMPT
    assert json.loads(json.dumps(manifest)) == manifest


class RecordingUNet:
    """Counts the rows of the UNet's input and of its added conditioning, per kind of call."""

    def __init__(self, unet):
        self.unet, self.calls = unet, []

    def __getattr__(self, name):
        return getattr(self.unet, name)

    def _record(self, kind, sample, added):
        self.calls.append((kind, sample.shape[0], added["text_embeds"].shape[0], added["time_ids"].shape[0]))

    def __call__(self, sample, *args, added_cond_kwargs, **kwargs):
        self._record("unet", sample, added_cond_kwargs)
        return self.unet(sample, *args, added_cond_kwargs=added_cond_kwargs, **kwargs)

    def full(self, sample, t, embeds, timestep_cond=None, added_cond_kwargs=None):
        self._record("full", sample, added_cond_kwargs)
        return unet_full(self.unet, sample, t, embeds, timestep_cond=timestep_cond, added_cond_kwargs=added_cond_kwargs)

    def shallow(self, sample, t, embeds, features, timestep_cond=None, added_cond_kwargs=None):
        self._record("shallow", sample, added_cond_kwargs)
        return unet_shallow(
            self.unet, sample, t, embeds, features, timestep_cond=timestep_cond, added_cond_kwargs=added_cond_kwargs
        )


@pytest.fixture
def recording(sdxl):
    unet = sdxl.unet
    sdxl.unet = RecordingUNet(unet)
    yield sdxl
    sdxl.unet = unet


def test_guidance_cutoff_and_deep_cache_pass_the_added_conditioning(recording):
    base = GenerationRequest(prompt=PROMPT, steps=4, seed=2, num_images=2, guidance_scale=5.0)
    cut = GenerationRequest(**{**vars(base), "guidance_cutoff": 0.5})
    generate_one(recording, cut)
    assert recording.unet.calls == [("unet", 4, 4, 4)] * 2 + [("unet", 2, 2, 2)] * 2
    recording.unet.calls.clear()
    cached = GenerationRequest(**{**vars(base), "deep_cache_interval": 2})
    assert pixels_of(generate_one(recording, cached)).shape == (2, 32, 32, 3)
    assert recording.unet.calls == [("full", 4, 4, 4), ("shallow", 4, 4, 4)] * 2


def test_deep_cache_full_step_is_the_unet_with_added_conditioning(sdxl):
    unet = sdxl.unet
    sample, context = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 96)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    with torch.inference_mode():
        plain = unet(sample, 500, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)[0]
        out, features = unet_full(unet, sample, 500, context, added_cond_kwargs=added)
        shallow = unet_shallow(unet, sample, 500, context, features, added_cond_kwargs=added)
    assert torch.equal(out, plain)
    torch.testing.assert_close(shallow, plain, rtol=0, atol=1e-6)


def test_fast_path_converts_sdxl_graphs_with_their_added_inputs(sdxl):
    """A bucket of an SDXL model is converted (OpenVINO here: seconds, where torch.compile takes minutes) with the
    pooled embeds and time ids as two more inputs, serves calls that bring them, and gives eager's pixels."""
    request = GenerationRequest(prompt=PROMPT, steps=2, seed=8, guidance_scale=5.0)
    eager = pixels_of(generate_one(sdxl, request))
    unet = sdxl.unet
    try:
        optimize(sdxl, channels_last=False, buckets=[Bucket(32, 32, 1)], backend="openvino")
        bucketed = sdxl.unet
        assert bucketed.takes_added == {("unet", 2, 16, 16): True}
        calls, graph = [], bucketed.graphs[("unet", 2, 16, 16)]
        bucketed.graphs[("unet", 2, 16, 16)] = lambda *args: calls.append(len(args)) or graph(*args)
        fast = pixels_of(generate_one(sdxl, request))
        assert calls == [5, 5] and np.abs(fast.astype(int) - eager).max() <= 1
        context = torch.zeros(2, 77, sdxl.unet.config.cross_attention_dim)
        assert bucketed._fit("unet", torch.zeros(2, 4, 16, 16), context, {}) is None  # a call without them: eager
    finally:
        sdxl.unet = unet
        sdxl.cache.pop("fast_path", None)


def test_hires_fix_runs_its_second_pass_with_its_own_size(sdxl, monkeypatch):
    sizes = []
    add_time_ids = pipeline.add_time_ids

    def spy(model, width, height):
        sizes.append((width, height))
        return add_time_ids(model, width, height)

    monkeypatch.setattr(pipeline, "add_time_ids", spy)
    request = GenerationRequest(prompt=PROMPT, steps=2, seed=4, hires_scale=2.0, hires_steps=2, hires_strength=0.5)
    steps = []
    result = generate_one(sdxl, request, callback=lambda state: steps.append(state.step))
    assert result.images[0].image.size == (64, 64)
    assert steps == [1, 2, 3]  # 2 steps, then int(2 × 0.5)
    assert sizes[0] == (32, 32) and sizes[-1] == (64, 64)
    full_res = GenerationRequest(
        prompt=PROMPT, steps=2, seed=4, init_image=init_image(), mask_image=square_mask(), inpaint_full_res=True,
    )
    assert generate_one(sdxl, full_res).images[0].image.size == (32, 32)


def test_prompt_cache_keeps_the_pooled_embeddings(sdxl, monkeypatch):
    sdxl.cache.pop("prompt_embeds", None)
    calls = []
    encode = pipeline._encode_prompt_sdxl
    monkeypatch.setattr(pipeline, "_encode_prompt_sdxl", lambda p, m: calls.append(p) or encode(p, m))
    first, pooled = encode_prompts_pooled(["a cat", "a dog", "a cat"], sdxl)
    again, pooled_again = encode_prompts_pooled(["a dog", "a cat"], sdxl)
    assert calls == ["a cat", "a dog"]
    assert first.shape == (3, 77, 96) and pooled.shape == (3, 32)
    assert torch.equal(again, first[[1, 0]]) and torch.equal(pooled_again, pooled[[1, 0]])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "a (red:1.3) cat"}, "weighting syntax .* not supported for SDXL"),
        ({"negative_prompt": "blue BREAK red"}, "negative_prompt: prompt weighting syntax"),
        ({"prompt": "red " * 80}, "prompt is longer than one window of 75 tokens"),
        ({"loras": (LoraSpec("ink", "/nowhere.safetensors", 0.8, "0" * 64),)}, "LoRAs are not supported for SDXL"),
    ],
)
def test_what_sdxl_does_not_support_is_refused(sdxl, fields, message):
    with pytest.raises(ValueError, match=message):
        pipeline.resolve_request(sdxl, GenerationRequest(**{"prompt": PROMPT, "steps": 2, **fields}))


def test_fp16_decodes_with_an_fp32_vae(sdxl_dir):
    model = load_model(sdxl_dir, device="cpu", dtype="fp16")
    assert model.unet.dtype == torch.float16 and model.vae_dtype == torch.float32  # force_upcast
    image = generate_one(model, GenerationRequest(prompt=PROMPT, steps=1, seed=0)).images[0]
    assert np.asarray(image.image).std() > 1
