"""The fast path on tiny models: bf16, channels-last, compiled buckets with padding, the tiny decoder."""

import json

import numpy as np
import pytest
import torch

from generator import GenerationRequest, ModelLoadError, generate, load_model, read_manifest
from generator.fastpath import Bucket, BucketedUNet, check_sdpa, optimize, parse_buckets
from generator.tiny import make_tiny_model

REQUEST = GenerationRequest(prompt="a red circle on a black background", steps=3, seed=5, num_images=2)


def pixels(model, request=REQUEST) -> np.ndarray:
    return np.stack([np.asarray(image.image) for image in generate(model, [request])[0].images]).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / max(np.mean((a - b) ** 2), 1e-10)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("fast") / "tiny")


@pytest.fixture(scope="module")
def reference(tiny):
    return pixels(load_model(tiny))


def test_bucket_parsing():
    assert parse_buckets("64x64, 512x768x4") == [Bucket(64, 64, 1), Bucket(512, 768, 4)]
    assert parse_buckets("") == []
    for bad in ("64", "64x", "64x64x0", "axb"):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT|at least 1"):
            parse_buckets(bad)


def test_bf16_channels_last_stays_close_to_fp32_and_keeps_latents_fp32(tiny, reference):
    model = load_model(tiny, dtype="bf16")
    optimize(model, channels_last=True)
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    dtypes = []
    images = generate(model, [REQUEST], callback=lambda state: dtypes.append(state.latents.dtype))[0].images
    assert set(dtypes) == {torch.float32}  # the scheduler's arithmetic is never done in bf16
    fast = np.stack([np.asarray(i.image) for i in images]).astype(np.float64)
    assert psnr(fast, reference) > 35
    assert read_manifest(images[0].png)["dtype"] == "bfloat16"


def test_channels_last_alone_changes_pixels_by_at_most_one_level(tiny, reference):
    model = load_model(tiny)
    optimize(model, channels_last=True)
    assert np.abs(pixels(model) - reference).max() <= 1


def test_padding_into_a_bigger_batch_changes_nothing(tiny):
    """A batch padded up to a compiled size gives each real row what it gets unpadded (no compile: graph = eager)."""
    model = load_model(tiny)
    unet = BucketedUNet(model.unet)
    calls = []

    def fake_compiled(sample, timestep, context):
        calls.append(sample.shape[0])
        return unet.eager(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]

    unet.graphs[("unet", 8, 32, 32)] = fake_compiled
    sample = torch.randn(3, 4, 32, 32)
    context = torch.randn(3, 77, model.text_encoder.config.hidden_size)
    with torch.inference_mode():
        padded = unet(sample, torch.tensor(10), encoder_hidden_states=context, return_dict=False)[0]
        plain = model.unet(sample, torch.tensor(10), encoder_hidden_states=context, return_dict=False)[0]
        other_size = unet(torch.randn(3, 4, 16, 16), 10, encoder_hidden_states=context, return_dict=False)[0]
    assert calls == [8] and padded.shape == plain.shape == (3, 4, 32, 32)
    torch.testing.assert_close(padded, plain, rtol=1e-4, atol=1e-5)
    assert other_size.shape == (3, 4, 16, 16) and calls == [8]  # a shape with no compiled batch ran eager


@pytest.mark.slow
def test_compiled_bucket_serves_its_shape_and_smaller_batches(tiny):
    model = load_model(tiny, dtype="bf16")
    eager = pixels(model)
    times = optimize(model, buckets=[Bucket(64, 64, 2)])
    assert list(times) == ["64x64x2:unet:4"] and model.unet.compiled_batches == {("unet", 32, 32): [4]}
    assert read_manifest(generate(model, [REQUEST])[0].images[0].png)["fast_path"]["backend"] == "compile"
    served = []
    compiled = model.unet.graphs[("unet", 4, 32, 32)]
    model.unet.graphs[("unet", 4, 32, 32)] = lambda sample, *args: served.append(sample.shape[0]) or compiled(
        sample, *args
    )
    assert psnr(pixels(model), eager) > 35  # 2 images: the compiled batch of 4 rows, as compiled
    one = GenerationRequest(prompt="a blue square", steps=2, seed=1)
    assert len(generate(model, [one])[0].images) == 1  # 1 image: 2 rows, padded to 4
    assert served == [4] * 3 + [4] * 2
    other = GenerationRequest(prompt="a blue square", steps=2, seed=1, width=32, height=32)
    assert generate(model, [other])[0].images[0].image.size == (32, 32)
    assert served == [4] * 5  # 32 × 32 has no compiled graph: it ran eager


def test_sdpa_is_checked(tiny):
    from diffusers.models.attention_processor import AttnProcessor

    model = load_model(tiny)
    check_sdpa(model)
    model.unet.set_attn_processor(AttnProcessor())
    with pytest.raises(ValueError, match="not SDPA"):
        check_sdpa(model)


def test_tiny_decoder(tiny, tmp_path, reference):
    import shutil

    from diffusers import AutoencoderTiny

    with pytest.raises(ModelLoadError, match="tiny_vae"):
        load_model(tiny, decoder="tiny")
    with pytest.raises(ValueError, match="unknown decoder"):
        load_model(tiny, decoder="fast")
    folder = tmp_path / "with-tiny"
    shutil.copytree(tiny, folder)
    factor_blocks = len(json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"])
    AutoencoderTiny(
        encoder_block_out_channels=[8] * factor_blocks, decoder_block_out_channels=[8] * factor_blocks,
        num_encoder_blocks=[1] * factor_blocks, num_decoder_blocks=[1] * factor_blocks,
    ).save_pretrained(folder / "tiny_vae")
    model = load_model(folder, decoder="tiny")
    images = generate(model, [REQUEST])[0].images
    assert images[0].image.size == (64, 64) and read_manifest(images[0].png)["decoder"] == "tiny"
    # Same latents, another decoder: different pixels (an untrained one), so the tiny decoder really ran.
    assert not np.array_equal(np.stack([np.asarray(i.image) for i in images]).astype(np.float64), reference)



def test_deep_cache_steps_and_the_prompts_only_batch_use_their_own_graphs(tiny):
    """Guidance cut-off and DeepCache route to the "full" and "shallow" graphs, padded like the plain one (the graphs
    here are eager stand-ins; benchmarks/bench_per_image.py compiles them for real)."""
    from generator.deepcache import FullUNet, ShallowUNet

    model = load_model(tiny)
    request = GenerationRequest(prompt="a red circle", steps=6, seed=2, guidance_scale=4.0, guidance_cutoff=0.5,
                                deep_cache_interval=3)
    eager = pixels(model, request)
    unet = model.unet = BucketedUNet(model.unet)
    served = []

    def stand_in(graph, module):
        return lambda sample, *args: served.append((graph, sample.shape[0])) or module(sample, *args)

    for graph, module in (("full", FullUNet(unet.eager)), ("shallow", ShallowUNet(unet.eager))):
        for batch in (2, 4):
            unet.graphs[(graph, batch, 32, 32)] = stand_in(graph, module)
    assert np.abs(pixels(model, request) - eager).max() <= 1  # padded rows may round differently with 2 threads
    # 1 image: 2 guided rows, padded to 4 where a 4-row graph fits; 1 prompts-only row padded to 2.
    assert served == [("full", 2), ("shallow", 2), ("shallow", 2), ("full", 2), ("shallow", 2), ("shallow", 2)]
    served.clear()
    plain = GenerationRequest(prompt="a red circle", steps=2, seed=2, guidance_scale=4.0)
    generate(model, [plain])
    assert served == [("full", 2)] * 2  # a plain call runs the full graph when no plain one was compiled


def test_openvino_graphs_match_eager_fp32_and_are_kept_for_the_next_start(tiny, tmp_path):
    pytest.importorskip("openvino")
    one = GenerationRequest(prompt="a red circle", steps=3, seed=2, guidance_scale=4.0)
    fewer = GenerationRequest(prompt="a red circle", steps=4, seed=2, guidance_scale=4.0, guidance_cutoff=0.5,
                              deep_cache_interval=2)
    model = load_model(tiny)
    eager = {"plain": pixels(model, one), "fewer": pixels(model, fewer)}
    times = optimize(model, buckets=[Bucket(64, 64, 1)], backend="openvino", cache_dir=tmp_path, cond_only=True,
                     deep_cache=True)
    assert sorted(times) == ["64x64x1:full:1", "64x64x1:full:2", "64x64x1:shallow:1", "64x64x1:shallow:2"]
    served = []
    for key, run in list(model.unet.graphs.items()):
        model.unet.graphs[key] = lambda *args, key=key, run=run: served.append(key[:2]) or run(*args)
    for name, request in (("plain", one), ("fewer", fewer)):
        assert np.abs(pixels(model, request) - eager[name]).max() <= 1  # fp32 both: at most one level apart
    assert ("full", 2) in served and ("shallow", 1) in served  # 2 rows guided, 1 after the cut-off
    saved = sorted(p.parent.name.split("-")[2] for p in (tmp_path / "openvino").glob("*/model.xml"))
    assert saved == ["full", "full", "shallow", "shallow"]
    again = load_model(tiny)
    optimize(again, buckets=[Bucket(64, 64, 1)], backend="openvino", cache_dir=tmp_path, cond_only=True,
             deep_cache=True)  # reads the saved models
    assert np.abs(pixels(again, fewer) - eager["fewer"]).max() <= 1
