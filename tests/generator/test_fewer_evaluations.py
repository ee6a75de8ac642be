"""Fewer UNet evaluations per image: the guidance cut-off and DeepCache-style feature caching, on the tiny model."""

import numpy as np
import pytest
import torch

from generator import GenerationRequest, generate, read_manifest
from generator.deepcache import unet_full, unet_shallow
from generator.pipeline import batch_key

REQUEST = GenerationRequest(prompt="a red circle", negative_prompt="blue", steps=6, seed=3, guidance_scale=5.0)


def pixels(model, request: GenerationRequest) -> np.ndarray:
    return np.stack([np.asarray(i.image) for i in generate(model, [request])[0].images]).astype(np.int16)


class CountingUNet:
    """The model's UNet, counting the rows of every call and which DeepCache step ran."""

    def __init__(self, unet):
        self.unet, self.calls = unet, []

    def __getattr__(self, name):
        return getattr(self.unet, name)

    def __call__(self, sample, *args, **kwargs):
        self.calls.append(("unet", sample.shape[0]))
        return self.unet(sample, *args, **kwargs)

    def full(self, sample, t, embeds, timestep_cond=None):
        self.calls.append(("full", sample.shape[0]))
        return unet_full(self.unet, sample, t, embeds, timestep_cond=timestep_cond)

    def shallow(self, sample, t, embeds, features, timestep_cond=None):
        self.calls.append(("shallow", sample.shape[0]))
        return unet_shallow(self.unet, sample, t, embeds, features, timestep_cond=timestep_cond)


@pytest.fixture
def counting(tiny_model):
    unet = tiny_model.unet
    tiny_model.unet = CountingUNet(unet)
    yield tiny_model
    tiny_model.unet = unet


def test_a_cutoff_at_the_end_is_full_guidance(tiny_model):
    assert np.array_equal(pixels(tiny_model, REQUEST), pixels(tiny_model, REQUEST.__class__(**{
        **REQUEST.__dict__, "guidance_cutoff": 1.0})))


def test_after_the_cutoff_only_the_prompts_half_runs(counting):
    request = GenerationRequest(**{**REQUEST.__dict__, "guidance_cutoff": 0.5, "num_images": 2})
    cut = pixels(counting, request)
    assert counting.unet.calls == [("unet", 4)] * 3 + [("unet", 2)] * 3  # 2 images: 4 rows guided, then 2
    full = pixels(counting, GenerationRequest(**{**REQUEST.__dict__, "num_images": 2}))
    assert cut.shape == full.shape and not np.array_equal(cut, full)  # the late steps lost their guidance
    # A cut-off of one step in six rounds up: guidance runs on at least one step.
    counting.unet.calls.clear()
    pixels(counting, GenerationRequest(**{**REQUEST.__dict__, "guidance_cutoff": 0.01}))
    assert counting.unet.calls == [("unet", 2)] + [("unet", 1)] * 5


def test_full_step_output_is_the_unets(tiny_model):
    unet = tiny_model.unet
    sample = torch.randn(2, 4, 16, 16)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.inference_mode():
        plain = unet(sample, 500, encoder_hidden_states=context, return_dict=False)[0]
        out, features = unet_full(unet, sample, 500, context)
        shallow = unet_shallow(unet, sample, 500, context, features)
    assert torch.equal(out, plain)
    # The shallow step on the same step's own features is the full step: it recomputes exactly what it skipped from.
    torch.testing.assert_close(shallow, plain, rtol=0, atol=1e-6)


def test_cache_interval_one_is_no_caching_and_larger_ones_skip_the_deep_blocks(counting):
    exact = pixels(counting, REQUEST)
    counting.unet.calls.clear()
    assert np.array_equal(pixels(counting, GenerationRequest(**{**REQUEST.__dict__, "deep_cache_interval": 1})), exact)
    assert counting.unet.calls == [("unet", 2)] * 6
    counting.unet.calls.clear()
    request = GenerationRequest(**{**REQUEST.__dict__, "deep_cache_interval": 3, "guidance_cutoff": 0.5})
    result = generate(counting, [request])[0].images[0]
    assert counting.unet.calls == [("full", 2), ("shallow", 2), ("shallow", 2), ("full", 1), ("shallow", 1),
                                   ("shallow", 1)]
    cached = np.asarray(result.image).astype(np.int16)
    assert cached.shape == exact.shape[1:] and np.abs(cached - exact[0]).mean() < 40  # close, not equal
    manifest = read_manifest(result.png)
    assert manifest["deep_cache_interval"] == 3 and manifest["guidance_cutoff"] == 0.5
    assert "deep_cache_interval" not in read_manifest(generate(counting, [REQUEST])[0].images[0].png)


def test_requests_with_other_evaluation_settings_do_not_batch(tiny_model):
    assert batch_key(REQUEST) != batch_key(GenerationRequest(**{**REQUEST.__dict__, "guidance_cutoff": 0.5}))
    assert batch_key(REQUEST) != batch_key(GenerationRequest(**{**REQUEST.__dict__, "deep_cache_interval": 2}))
    with pytest.raises(ValueError, match="deep_cache_interval"):
        generate(tiny_model, [REQUEST, GenerationRequest(**{**REQUEST.__dict__, "deep_cache_interval": 2})])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("guidance_cutoff", 0.0, r"guidance_cutoff must be a number in \(0.0, 1.0\]"),
        ("guidance_cutoff", 1.5, r"guidance_cutoff must be a number in \(0.0, 1.0\]"),
        ("deep_cache_interval", 0, "deep_cache_interval must be an integer from 1 to 10"),
        ("deep_cache_interval", 11, "deep_cache_interval must be an integer from 1 to 10"),
        ("deep_cache_interval", 2.0, "deep_cache_interval must be an integer from 1 to 10"),
    ],
)
def test_out_of_range_values_name_the_range(tiny_model, field, value, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_model, [GenerationRequest(**{**REQUEST.__dict__, field: value})])
