"""LoRAs per request (generator.lora, generator.lora_info) on the tiny model: kohya, diffusers and peft files, parity
with diffusers' `StableDiffusionPipeline.load_lora_weights`, switching without leaks, and refusals."""

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from generator import GenerationRequest, LoraSpec, batch_key, generate, load_model, make_scheduler, read_manifest
from generator.fastpath import BucketedUNet
from generator.lora import activate, unload_all
from generator.lora_info import LoraError, check_compatible, check_lora_weight, read_lora_info
from generator.pipeline import encode_prompts, resolve_request

REQUEST = GenerationRequest(
    prompt="a red circle", negative_prompt="blue", steps=3, guidance_scale=5.0, scheduler="ddim", seed=11
)


# LoRA files: a diffusers one (UNet and text encoder, as diffusers' training scripts save them), a kohya one
# (lora_unet_… / lora_te_… with alphas, written key by key as kohya's sd-scripts name them) and a peft one (a bare
# UNet adapter). Each has random, non-zero up (B) matrices, so that it changes the image.


def write_diffusers_lora(model_dir: Path, out: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v"]))
    text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder")
    text_encoder.add_adapter(
        LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj"])
    )
    StableDiffusionPipeline.save_lora_weights(  # with its LoraConfigs (alpha) in the file's metadata
        out,
        unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(text_encoder),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=text_encoder.peft_config["default"].to_dict(),
        weight_name=f"style{seed}.safetensors",
    )
    return out / f"style{seed}.safetensors"


def write_kohya_lora(model_dir: Path, path: Path, rank: int = 8, alpha: float = 4.0) -> Path:
    """kohya's default LoRA: every linear layer (and 1×1 convolution) of the UNet's transformers and of the text
    encoder's attention and MLP blocks."""
    generator = torch.Generator().manual_seed(3)
    tensors = {}

    def add(key: str, layer: torch.nn.Module) -> None:
        down = (rank, layer.weight.shape[1], *layer.weight.shape[2:])  # (r, in) or (r, in, 1, 1)
        up = (layer.weight.shape[0], rank, *[1] * (layer.weight.ndim - 2))
        tensors[f"{key}.lora_down.weight"] = torch.randn(down, generator=generator) * 0.3
        tensors[f"{key}.lora_up.weight"] = torch.randn(up, generator=generator) * 0.3
        tensors[f"{key}.alpha"] = torch.tensor(alpha)  # the scale is alpha / rank

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    for name, layer in unet.named_modules():
        if ".attentions." in name and isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
            add("lora_unet_" + name.replace(".", "_"), layer)  # lora_unet_down_blocks_0_attentions_0_proj_in
    text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder")
    for name, layer in text_encoder.named_modules():
        if (".self_attn." in name or ".mlp." in name) and isinstance(layer, torch.nn.Linear):
            add("lora_te_text_model_" + name.removeprefix("text_model.").replace(".", "_"), layer)
    save_file(tensors, path)
    return path


def write_peft_lora(model_dir: Path, path: Path) -> Path:
    torch.manual_seed(5)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    unet.add_adapter(
        LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_k", "to_v", "to_out.0"])
    )
    tensors = get_peft_model_state_dict(unet)  # down_blocks.0.….to_k.lora_A.weight: no prefix, no alpha
    save_file({key: value * 3 if ".lora_B." in key else value for key, value in tensors.items()}, path)
    return path


def write_header_only(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    save_file({name: torch.zeros(shape) for name, shape in shapes.items()}, path)
    return path


@pytest.fixture(scope="module")
def files(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("loras")
    return {
        "diffusers": write_diffusers_lora(tiny_model_dir, out, seed=1),
        "diffusers2": write_diffusers_lora(tiny_model_dir, out, seed=2),
        "kohya": write_kohya_lora(tiny_model_dir, out / "ink.safetensors"),
        "peft": write_peft_lora(tiny_model_dir, out / "bare.safetensors"),
    }


def spec(path: Path, weight: float = 1.0) -> LoraSpec:
    return LoraSpec(name=path.stem, path=str(path), weight=weight, sha256=read_lora_info(path).sha256)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)  # its own: the session's tiny_model never has a LoRA loaded


def pixels(model, request=REQUEST) -> np.ndarray:
    return np.asarray(generate(model, [request])[0].images[0].image).astype(int)


def stock_pixels(model_dir: Path, loras: list[tuple[Path, float]], request=REQUEST) -> np.ndarray:
    """diffusers' own pipeline, from the same folder, with the same LoRA files at the same weights."""
    pipe = StableDiffusionPipeline.from_pretrained(
        model_dir, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.scheduler = make_scheduler(request.scheduler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    for index, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"a{index}")
    pipe.set_adapters([f"a{index}" for index in range(len(loras))], [weight for _, weight in loras])
    image = pipe(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        height=32,
        width=32,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="np",
    ).images[0]
    return (image * 255).round().astype(int)


# Reading files (generator.lora_info, torch-free)


def test_info_reads_format_kind_rank_and_hash(files):
    infos = {name: read_lora_info(files[name]) for name in ("diffusers", "kohya", "peft")}
    found = {name: (i.format, i.base_kind, i.context_dim, i.rank, i.text_encoder) for name, i in infos.items()}
    assert found == {
        "diffusers": ("diffusers", "custom", 32, 4, True),  # custom: the tiny model's own width
        "kohya": ("kohya", "custom", 32, 8, True),
        "peft": ("peft", "custom", 32, 2, False),
    }
    assert infos["kohya"].sha256 == hashlib.sha256(files["kohya"].read_bytes()).hexdigest()


def test_base_kind_is_the_context_width(tmp_path):
    def kind(name: str, shapes: dict) -> str:
        return read_lora_info(write_header_only(tmp_path / f"{name}.safetensors", shapes)).base_kind

    attn2 = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    assert kind("sd1", {f"{attn2}.lora_down.weight": (4, 768), f"{attn2}.lora_up.weight": (320, 4)}) == "sd1"
    assert (
        kind("sd2", {"unet.x.attn2.to_v.lora_A.weight": (4, 1024), "unet.x.attn2.to_v.lora_B.weight": (4, 4)}) == "sd2"
    )
    te1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    assert (
        kind("sdxl", {f"{te1}.lora_down.weight": (4, 768), "lora_te2_x_self_attn_q_proj.lora_down.weight": (4, 1280)})
        == "sdxl"
    )
    te = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    assert kind("te_only", {f"{te}.lora_A.weight": (4, 1024), f"{te}.lora_B.weight": (1024, 4)}) == "sd2"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert (
        kind("conv", {f"{conv}.lora_down.weight": (4, 320, 3, 3), f"{conv}.lora_up.weight": (320, 4, 1, 1)})
        == "unknown"
    )


def test_corrupt_files_are_refused_with_the_file_named(files, tmp_path):
    good = files["kohya"].read_bytes()
    cases = {
        "truncated": good[: len(good) - 100],
        "empty": b"",
        "garbage": b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
        "huge_header": (1 << 40).to_bytes(8, "little") + b"{}",
    }
    for name, data in cases.items():
        (tmp_path / f"{name}.safetensors").write_bytes(data)
        with pytest.raises(LoraError, match=f"{name}.safetensors"):
            read_lora_info(tmp_path / f"{name}.safetensors")
    not_lora = write_header_only(tmp_path / "weights.safetensors", {"conv.weight": (4, 4)})
    with pytest.raises(LoraError, match="no format known"):
        read_lora_info(not_lora)


def test_lora_for_another_base_model_is_refused(model, tiny_model_dir, tmp_path):
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    sd2 = write_header_only(
        tmp_path / "sd2_style.safetensors", {f"{key}.lora_down.weight": (4, 1024), f"{key}.lora_up.weight": (32, 4)}
    )
    message = f"LoRA 'sd2_style' was made for SD 2.x \\(context 1024\\) and model '{tiny_model_dir.name}' is custom"
    with pytest.raises(LoraError, match=message):
        check_compatible(read_lora_info(sd2), tiny_model_dir)
    with pytest.raises(LoraError, match=message):  # before any compute
        generate(model, [replace(REQUEST, loras=(spec(sd2),))], callback=lambda state: pytest.fail("it ran"))


def test_lora_whose_layers_do_not_fit_is_refused_and_leaves_nothing(model, tiny_model, tmp_path):
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # the right width, a wrong shape
    misfit = tmp_path / "misfit.safetensors"
    save_file({f"{key}.lora_down.weight": torch.ones(2, 32), f"{key}.lora_up.weight": torch.ones(48, 2)}, misfit)
    with pytest.raises(LoraError, match="(?s)LoRA 'misfit' .* does not fit model 'tiny': .*size mismatch"):
        generate(model, [replace(REQUEST, loras=(spec(misfit),))])
    assert np.array_equal(pixels(model), pixels(tiny_model))


def test_weights_outside_the_range_are_refused(model, files):
    check_lora_weight(-4.0)
    for weight in (4.5, -10, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="weight of LoRA 'ink' must be a number from -4.0 to 4.0"):
            resolve_request(model, replace(REQUEST, loras=(spec(files["kohya"], weight),)))
    with pytest.raises(ValueError, match="each LoRA may appear once"):
        resolve_request(model, replace(REQUEST, loras=(spec(files["kohya"]), spec(files["kohya"], 0.5))))
    with pytest.raises(ValueError, match="loras must be a tuple of generator.lora.LoraSpec"):
        resolve_request(model, replace(REQUEST, loras=({"name": "ink", "weight": 1},)))
    changed = replace(spec(files["kohya"]), sha256="0" * 64)
    with pytest.raises(LoraError, match="the file changed"):
        generate(model, [replace(REQUEST, loras=(changed,))])


def test_batch_key_groups_only_equal_loras_and_weights(files):
    ink, style = spec(files["kohya"]), spec(files["diffusers"])
    plain = batch_key(REQUEST)
    assert batch_key(replace(REQUEST, loras=())) == plain == (None, None, 3, "ddim")  # txt2img keys unchanged
    keys = [
        batch_key(replace(REQUEST, loras=loras))
        for loras in ((ink,), (replace(ink, weight=0.5),), (style,), (ink, style), (style, ink))
    ]
    assert len(set(keys + [plain])) == 6
    assert batch_key(replace(REQUEST, prompt="other", seed=3, loras=(ink,))) == keys[0]


# Images: our loop against diffusers' pipeline, switching, leaks


@pytest.mark.parametrize("kind", ["diffusers", "kohya"])
def test_image_matches_diffusers_pipeline_with_the_same_lora(model, files, tiny_model_dir, kind, record_property):
    ours = pixels(model, replace(REQUEST, loras=(spec(files[kind], 0.8),)))
    stock = stock_pixels(tiny_model_dir, [(files[kind], 0.8)])
    difference = int(np.abs(ours - stock).max())
    record_property("max_difference_levels", difference)
    assert difference <= 1
    assert np.abs(ours - pixels(model)).mean() > 2  # the LoRA does change the image


def test_two_loras_at_once_match_diffusers_pipeline(model, files, tiny_model_dir):
    loras = [(files["diffusers2"], 0.7), (files["kohya"], -1.5)]
    ours = pixels(model, replace(REQUEST, loras=tuple(spec(path, weight) for path, weight in loras)))
    assert np.abs(ours - stock_pixels(tiny_model_dir, loras)).max() <= 1
    alone = pixels(model, replace(REQUEST, loras=(spec(files["diffusers2"], 0.7),)))
    assert np.abs(ours - alone).mean() > 1  # both apply


def test_peft_file_loads_as_the_same_adapter_in_diffusers_format(model, files, tmp_path):
    named = {f"unet.{key}": value for key, value in load_file(files["peft"]).items()}
    as_diffusers = tmp_path / "bare_diffusers.safetensors"
    save_file(named, as_diffusers)
    ours = pixels(model, replace(REQUEST, loras=(spec(files["peft"], 1.2),)))
    assert np.array_equal(ours, pixels(model, replace(REQUEST, loras=(spec(as_diffusers, 1.2),))))
    assert np.abs(ours - pixels(model)).mean() > 1


def test_nothing_leaks_into_the_next_batch(model, tiny_model, files):
    fresh = pixels(tiny_model)  # the same folder, never a LoRA
    ink = spec(files["kohya"])
    with_lora = pixels(model, replace(REQUEST, loras=(ink, spec(files["diffusers"], 1.5))))
    assert np.array_equal(pixels(model), fresh)
    assert np.array_equal(pixels(model, replace(REQUEST, loras=(replace(ink, weight=0.0),))), fresh)  # weight 0
    assert np.array_equal(pixels(model, replace(REQUEST, loras=(ink, spec(files["diffusers"], 1.5)))), with_lora)


def test_text_encoder_lora_changes_the_cached_prompt_embeddings(model, files):
    activate(model, [])
    plain = encode_prompts(["a red circle"], model)
    activate(model, [spec(files["diffusers"])])
    styled = encode_prompts(["a red circle"], model)
    assert not torch.equal(plain, styled)
    activate(model, [spec(files["peft"])])  # UNet only: the text encoder as without a LoRA
    assert torch.equal(encode_prompts(["a red circle"], model), plain)
    activate(model, [])


def test_manifest_records_each_lora_by_hash_and_weight(model, files):
    ink = spec(files["kohya"], -0.5)
    image = generate(model, [replace(REQUEST, loras=(ink,))])[0].images[0]
    expected = [{"name": "ink", "sha256": ink.sha256, "weight": -0.5}]
    assert image.manifest["loras"] == read_manifest(image.png)["loras"] == expected
    assert "loras" not in generate(model, [REQUEST])[0].images[0].manifest


def test_compiled_graphs_are_bypassed_while_a_unet_lora_is_active(tiny_model_dir, files):
    """A compiled graph holds the UNet as compiled: a stand-in here runs a frozen copy, without compiling."""
    model = load_model(tiny_model_dir)
    plain = pixels(model)
    frozen = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet").eval()
    model.unet = BucketedUNet(model.unet)
    served = []

    def fake_compiled(sample, timestep, context):
        served.append(sample.shape[0])
        return frozen(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]

    model.unet.graphs[("unet", 2, 16, 16)] = fake_compiled
    # The stand-in graph gets a float timestep where the eager UNet gets the scheduler's: float rounding, 1 level.
    assert np.abs(pixels(model).astype(int) - plain).max() <= 1 and served == [2] * 3
    served.clear()
    with_lora = replace(REQUEST, loras=(spec(files["peft"]),))  # a UNet LoRA
    assert model.unet.eager_only is False
    styled = pixels(model, with_lora)
    assert served == [] and model.unet.eager_only is True
    assert np.abs(styled - plain).mean() > 1
    assert np.abs(pixels(model).astype(int) - plain).max() <= 1 and served == [2] * 3  # back on the graph
    unload_all(model)
    assert not any("lora" in name for name, _ in model.unet.eager.named_modules())
