import json
import shutil

import pytest
import torch

from generator import ModelLoadError, TinyModelConfig, check_model_folder, load_model, make_tiny_model
from generator.loading import hash_model_folder, resolve_device


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "copy")


def test_tiny_maker_writes_the_stable_diffusion_layout(tiny_model_dir):
    for part in ["model_index.json", "tokenizer", "text_encoder", "unet", "vae", "scheduler"]:
        assert (tiny_model_dir / part).exists(), part
    assert check_model_folder(tiny_model_dir) == tiny_model_dir


def test_loads_the_real_classes(tiny_model):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(tiny_model.tokenizer, CLIPTokenizer)
    assert isinstance(tiny_model.text_encoder, CLIPTextModel)
    assert isinstance(tiny_model.unet, UNet2DConditionModel)
    assert isinstance(tiny_model.vae, AutoencoderKL)
    assert tiny_model.defaults.width == tiny_model.defaults.height == 32
    assert tiny_model.defaults.scheduler == "ddim"
    assert tiny_model.vae_scale_factor == 2


def test_tiny_maker_is_deterministic(tmp_path):
    config = TinyModelConfig(sample_size=32, seed=5)
    a = make_tiny_model(tmp_path / "a", config)
    b = make_tiny_model(tmp_path / "b", config)
    assert hash_model_folder(a) == hash_model_folder(b)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_missing_parts_are_all_named(model_copy):
    shutil.rmtree(model_copy / "vae")
    (model_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as error:
        load_model(model_copy)
    assert "vae/" in str(error.value)
    assert "unet/diffusion_pytorch_model.safetensors" in str(error.value)


def test_corrupt_config_is_named(model_copy):
    (model_copy / "unet" / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match=r"unet/config.json is not valid JSON"):
        load_model(model_copy)


def test_corrupt_weights_are_named(model_copy):
    (model_copy / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"could not load .*vae"):
        load_model(model_copy)


def test_content_hash_changes_with_weights(model_copy, tiny_model):
    assert hash_model_folder(model_copy) == tiny_model.content_hash
    config = json.loads((model_copy / "scheduler" / "scheduler_config.json").read_text())
    config["beta_end"] = 0.02
    (model_copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert hash_model_folder(model_copy) != tiny_model.content_hash


def test_generator_json_sets_defaults(model_copy):
    (model_copy / "generator.json").write_text(json.dumps({"defaults": {"steps": 12, "scheduler": "euler"}}))
    model = load_model(model_copy)
    assert (model.defaults.steps, model.defaults.scheduler) == (12, "euler")
    (model_copy / "generator.json").write_text(json.dumps({"defaults": {"stepz": 12}}))
    with pytest.raises(ModelLoadError, match="unknown defaults"):
        load_model(model_copy)


def test_devices_and_dtypes_are_arguments(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu", dtype="bf16")
    assert model.unet.dtype == torch.bfloat16 and model.text_encoder.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(tiny_model_dir, dtype="fp8")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
