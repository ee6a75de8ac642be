"""Training: config handling, and a smoke run of every stage (a few steps, tiny sizes) through export and load."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from generator.data.shapes64 import HELD_OUT_PAIRS, flip_scene, full_caption, make_scene
from generator.train.config import ClipConfig, UnetConfig, load_config
from generator.train.data import training_batch
from generator.train.loop import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

TINY = {
    "clip": dict(steps=3, batch_size=8, hidden_size=32, layers=1, heads=2, projection_dim=16),
    "vae": dict(
        steps=3, batch_size=4, block_out_channels=[32, 32], norm_num_groups=8, eval_images=8, disc_weight=0.1,
        disc_start=1, perceptual_layers=[1],
    ),
    "unet": dict(
        steps=3, batch_size=4, block_out_channels=[32, 32], norm_num_groups=8, head_channels=16,
        sample_prompts=3, default_steps=2,
        # unet.yaml's 32 000-scene pool and bf16 autocast are the real run's; a smoke run draws fresh batches in fp32.
        latent_pool=0, attention_levels=None, mixed_precision="no",
    ),
    # mixed_precision no: Accelerate keeps one precision per process, and the other stages here ran in fp32.
    "tiny_vae": dict(
        steps=3, batch_size=4, channels=16, blocks_per_level=1, eval_images=8, perceptual_layers=[1],
        mixed_precision="no",
    ),
    "lora": dict(
        steps=3, batch_size=4, latent_pool=8, sample_prompts=2, rank=2, alpha=4.0, learning_rate=0.05,
        mixed_precision="no",
    ),
}
COMMON = dict(log_every=1, sample_every=2, checkpoint_every=2, warmup_steps=1)


def tiny_config(stage: str, out: Path, **extra):
    return load_config(CONFIGS / f"{stage}.yaml", {**COMMON, **TINY[stage], "output_dir": str(out / stage), **extra})


SHIPPED_CONFIGS = {"clip.yaml": "clip", "clip_attributes.yaml": "clip", "vae.yaml": "vae", "unet.yaml": "unet",
                   "unet_again.yaml": "unet", "tiny_vae.yaml": "tiny_vae", "lora.yaml": "lora"}


def test_every_config_is_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(SHIPPED_CONFIGS)


@pytest.mark.parametrize("name", sorted(SHIPPED_CONFIGS))
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert config.stage == SHIPPED_CONFIGS[name]


RECIPE = CONFIGS / "recipes" / "shapes64.yaml"


def make_train_runs() -> list[tuple[str, list[str]]]:
    """(config file, command-line overrides) of each step of the recipe `make train` runs, in order."""
    from generator.train.recipe import load_recipe

    return [(Path(step.config).name, step.overrides) for step in load_recipe(RECIPE)]


def test_make_train_runs_the_recipe_and_nothing_else():
    makefile = (CONFIGS.parent / "Makefile").read_text()
    recipe = makefile.split("\ntrain:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert [line.split() for line in recipe] == [
        ["$(BIN)/python", "-m", "generator.train", "--recipe", "configs/recipes/shapes64.yaml"]
    ]


MAKE_TRAIN = make_train_runs()
UNET_RUNS = [(name, overrides) for name, overrides in MAKE_TRAIN if SHIPPED_CONFIGS[name] == "unet"]
UNET_CONFIGS = [load_config(CONFIGS / name, overrides) for name, overrides in UNET_RUNS]


def test_make_train_runs_every_shipped_config_to_new_output_dirs():
    assert {name for name, _ in MAKE_TRAIN} == set(SHIPPED_CONFIGS)
    outputs = [load_config(CONFIGS / name, overrides).output_dir for name, overrides in MAKE_TRAIN]
    assert len(set(outputs)) == len(outputs)


@pytest.mark.parametrize("earlier, later", zip(UNET_RUNS, UNET_RUNS[1:]), ids=lambda run: " ".join([run[0], *run[1]]))
def test_each_unet_step_goes_on_from_the_one_before_with_its_schedule_encoder_and_vae(earlier, later):
    from generator.train.unet import scheduler_config

    first, second = load_config(CONFIGS / earlier[0], earlier[1]), load_config(CONFIGS / later[0], later[1])
    assert second.init_from == f"{first.output_dir}/final"
    assert scheduler_config(second) == scheduler_config(first)
    assert (second.clip_dir, second.vae_dir, second.cond_dropout) == (first.clip_dir, first.vae_dir, first.cond_dropout)
    assert (second.default_scheduler, second.default_steps) == (first.default_scheduler, first.default_steps)
    assert second.seed != first.seed  # fresh batches each cycle


def test_make_train_chains_clip_vae_and_unet_through_one_two_layer_clip():
    """One CLIP (two layers, then its attribute step) serves as the UNet's text encoder and the VAE's perceptual
    network; the UNet steps encode with the VAE that make train's VAE line writes."""
    runs = [load_config(CONFIGS / name, overrides) for name, overrides in MAKE_TRAIN]
    clip, attributes = [run for run in runs if run.stage == "clip"]
    (vae,) = [run for run in runs if run.stage == "vae"]
    assert clip.layers == 2 and attributes.init_from == f"{clip.output_dir}/final"
    assert vae.clip_dir == f"{attributes.output_dir}/final"
    assert {(c.clip_dir, c.vae_dir) for c in UNET_CONFIGS} == {(vae.clip_dir, f"{vae.output_dir}/final")}
    assert UNET_CONFIGS[0].init_from == ""  # the first UNet step starts from scratch


def test_only_the_last_unet_step_writes_the_built_in_model():
    exports = [config.export_dir for config in UNET_CONFIGS]
    assert exports == [""] * (len(UNET_CONFIGS) - 1) + ["models/shapes64"]


def test_the_exporting_unet_step_writes_the_shipped_sampling_defaults():
    config = UNET_CONFIGS[-1]
    shipped = json.loads((CONFIGS.parent / config.export_dir / "generator.json").read_text())["defaults"]
    assert shipped == {"steps": config.default_steps, "guidance_scale": config.default_guidance_scale,
                       "scheduler": config.default_scheduler}


def test_unknown_keys_and_bad_types_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown key.*bogus"):
        load_config(CONFIGS / "clip.yaml", ["bogus=1"])
    with pytest.raises(ValueError, match="steps should be int"):
        load_config(CONFIGS / "clip.yaml", ["steps=many"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(CONFIGS / "clip.yaml", ["steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: unet\nlearning_rate: 0.1\nnot_a_key: 3\n")
    with pytest.raises(ValueError, match="not_a_key"):
        load_config(bad)


def test_overrides_replace_file_values_and_ints_become_floats():
    config = load_config(CONFIGS / "unet.yaml", ["steps=7", "learning_rate=1", "train_text_encoder=true"])
    assert isinstance(config, UnetConfig)
    assert config.steps == 7 and config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.train_text_encoder is True
    assert isinstance(load_config(CONFIGS / "clip.yaml"), ClipConfig)


def test_no_is_a_word_not_a_boolean_on_the_command_line_and_in_files(tmp_path):
    """YAML 1.1 reads no/yes/on/off as booleans: `mixed_precision=no` was refused as the boolean False."""
    assert load_config(CONFIGS / "unet.yaml", ["mixed_precision=no"]).mixed_precision == "no"
    path = tmp_path / "vae.yaml"
    path.write_text((CONFIGS / "vae.yaml").read_text() + "mixed_precision: no\n")
    assert load_config(path).mixed_precision == "no"
    assert load_config(CONFIGS / "unet.yaml", ["train_text_encoder=False"]).train_text_encoder is False
    with pytest.raises(ValueError, match="train_text_encoder should be bool"):
        load_config(CONFIGS / "unet.yaml", ["train_text_encoder=yes"])


def test_training_batches_keep_captions_true_and_never_show_held_out_pairs():
    rng = np.random.default_rng(0)
    images, captions = training_batch(rng, 64, data_seed=0)
    assert images.shape == (64, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    for caption in captions:
        for colour, shape in HELD_OUT_PAIRS:
            assert f"{colour} {shape}" not in caption
    # A flipped scene's full caption swaps left and right and nothing else.
    scene = next(s for i in range(100) if "left" in full_caption(s := make_scene(0, i, "train")))
    assert full_caption(flip_scene(scene)) == full_caption(scene).replace("left", "right")


def _is_two_object(caption: str) -> bool:
    return any(word in caption for word in (" left of ", " right of ", " above ", " below "))


def test_two_object_fraction_reweights_the_scenes_drawn_not_what_they_are():
    for share, expected in ((1.0, 64), (0.0, 0)):
        _, captions = training_batch(np.random.default_rng(1), 64, data_seed=0, two_object_fraction=share)
        assert sum(map(_is_two_object, captions)) == expected
        assert not any(f"{c} {s}" in text for text in captions for c, s in HELD_OUT_PAIRS)
    _, captions = training_batch(np.random.default_rng(2), 400, data_seed=0, two_object_fraction=0.6)
    assert 0.5 < np.mean([_is_two_object(c) for c in captions]) < 0.7
    _, captions = training_batch(np.random.default_rng(2), 400, data_seed=0)  # the split's own mix: 30%
    assert 0.2 < np.mean([_is_two_object(c) for c in captions]) < 0.4
    with pytest.raises(ValueError, match="two_object_fraction"):
        load_config(CONFIGS / "unet.yaml", ["two_object_fraction=1.5"])
    with pytest.raises(ValueError, match="two_object_fraction"):
        load_config(CONFIGS / "unet.yaml", ["two_object_fraction=most"])


def test_high_noise_fraction_moves_that_share_of_timesteps_to_the_high_noise_range():
    from generator.train.unet import draw_timesteps

    uniform = draw_timesteps(20_000, 1000, 0.0, 600, torch.Generator().manual_seed(0))
    assert uniform.min() == 0 and uniform.max() == 999
    assert 0.38 < (uniform >= 600).float().mean() < 0.42  # uniform: 40% of draws at t >= 600
    biased = draw_timesteps(20_000, 1000, 0.6, 600, torch.Generator().manual_seed(0))
    assert biased.min() == 0 and biased.max() == 999
    assert 0.74 < (biased >= 600).float().mean() < 0.78  # 0.6 + 0.4 × 0.4
    low = biased[biased < 600].float()
    assert abs(low.mean().item() - 299.5) < 10  # what stays below 600 is still uniform there
    assert torch.equal(biased, draw_timesteps(20_000, 1000, 0.6, 600, torch.Generator().manual_seed(0)))
    for bad in ("high_noise_fraction=1.5", "high_noise_fraction=most", "high_noise_from=1000", "high_noise_from=0.5"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            load_config(CONFIGS / "unet.yaml", [bad])


def _run(config, resume=None):
    return train(config, resume=resume, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The three stages in order, each a few steps at tiny sizes."""
    out = tmp_path_factory.mktemp("train")
    clip = _run(tiny_config("clip", out))
    vae = _run(tiny_config("vae", out, clip_dir=str(clip)))
    unet = _run(tiny_config("unet", out, clip_dir=str(clip), vae_dir=str(vae), export_dir=str(out / "export")))
    return out, clip, vae, unet


@pytest.mark.slow
def test_every_stage_logs_samples_checkpoints_and_final_weights(trained):
    out, clip, vae, unet = trained
    for stage in ("clip", "vae", "unet"):
        run = out / stage
        records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if "loss" in r]
        assert len(losses) == 3 and all(np.isfinite(losses))
        assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-0000002.png", "step-0000003.png"]
        checkpoint = run / "checkpoints" / "step-0000003"
        assert load_config(checkpoint / "config.yaml").steps == 3  # checkpoints carry their resolved config
    assert (clip / "text_encoder").is_dir() and (clip / "tokenizer").is_dir() and (clip / "clip").is_dir()
    assert json.loads((vae / "vae" / "config.json").read_text())["scaling_factor"] > 0
    vae_records = [json.loads(line) for line in (out / "vae" / "log.jsonl").read_text().splitlines()]
    assert any("d_loss" in r for r in vae_records)  # the discriminator ran after disc_start


def test_exported_model_loads_and_generates(trained):
    from generator.loading import load_model
    from generator.pipeline import GenerationRequest, generate_one

    out, _, _, unet = trained
    model = load_model(unet, device="cpu", dtype=torch.float32)
    assert model.defaults.steps == 2 and model.defaults.width == 64
    assert model.unet.dtype == torch.float32
    assert {p.name for p in unet.iterdir()} >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "clip"}
    assert (out / "export" / "model_index.json").is_file()
    assert model.scheduler_config["rescale_betas_zero_snr"] is True
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    image = generate_one(model, GenerationRequest(prompt="a red circle", seed=1)).images[0].image
    assert image.size == (64, 64)
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        generate_one(model, GenerationRequest(prompt="a red circle", seed=1, scheduler="pndm"))


@pytest.mark.slow
def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(tmp_path):
    straight = _run(tiny_config("clip", tmp_path / "a", steps=4, sample_every=0))
    first = tiny_config("clip", tmp_path / "b", steps=2, sample_every=0, checkpoint_every=1)
    _run(first)
    resumed = _run(tiny_config("clip", tmp_path / "b", steps=4, sample_every=0, checkpoint_every=1), resume="latest")
    from safetensors.torch import load_file

    weights_a = load_file(straight / "clip" / "model.safetensors")
    weights_b = load_file(resumed / "clip" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=0, atol=1e-6)


def test_command_line_prints_the_resolved_config(capsys):
    from generator.train.__main__ import main

    assert main(["--config", str(CONFIGS / "vae.yaml"), "steps=9", "--print-config"]) == 0
    assert "steps: 9" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--config", str(CONFIGS / "vae.yaml"), "nonsense=1"])


def test_unet_stage_goes_on_from_an_exported_model_folder(trained, tmp_path):
    """`init_from`, `clip_dir` and `vae_dir` can all name an exported fp16 model: it starts from its UNet."""
    from safetensors.torch import load_file

    _, _, _, exported = trained
    config = tiny_config(
        "unet", tmp_path, clip_dir=str(exported), vae_dir=str(exported), init_from=str(exported),
        steps=1, sample_every=0, learning_rate=1e-12, high_noise_fraction=0.6,  # runs draw_timesteps' high-noise branch
    )
    final = _run(config)
    before = load_file(exported / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(final / "unet" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=1e-3)
    for name in ("unet", "vae", "text_encoder"):  # no local path of the source folder in a shipped config
        assert "_name_or_path" not in json.loads((final / name / "config.json").read_text()), name


def test_tiny_vae_stage_trains_a_decoder_the_fast_path_loads(trained, tmp_path):
    import shutil

    from generator.loading import load_model
    from generator.pipeline import GenerationRequest, generate_one

    _, _, _, exported = trained
    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir)
    final = _run(tiny_config("tiny_vae", tmp_path, model_dir=str(model_dir), export_dir=str(model_dir)))
    records = [json.loads(line) for line in (tmp_path / "tiny_vae" / "log.jsonl").read_text().splitlines()]
    assert len([r for r in records if "loss" in r]) == 3
    assert {"teacher_accuracy", "tiny_accuracy", "tiny_psnr"} <= set(records[-1])
    assert (final / "tiny_vae" / "config.json").is_file() and (model_dir / "tiny_vae" / "config.json").is_file()
    model = load_model(model_dir, decoder="tiny")
    assert model.tiny_vae.dtype == torch.float32  # saved in fp16, loaded in the dtype asked for
    assert generate_one(model, GenerationRequest(prompt="a red circle", seed=1)).images[0].image.size == (64, 64)



def test_lora_stage_adapts_an_exported_model_into_a_file_the_service_applies(trained, tmp_path):
    from generator.loading import load_model
    from generator.lora import LoraSpec
    from generator.lora_info import read_lora_info
    from generator.pipeline import GenerationRequest, generate_one

    _, _, _, exported = trained
    shipped = tmp_path / "loras" / "style.safetensors"
    _run(tiny_config("lora", tmp_path, model_dir=str(exported), export_path=str(shipped)))
    records = [json.loads(line) for line in (tmp_path / "lora" / "log.jsonl").read_text().splitlines()]
    assert len([r for r in records if "loss" in r]) == 3 and {"style_accuracy", "plain_accuracy"} <= set(records[-1])
    info = read_lora_info(shipped)
    assert info.rank == 2 and info.format == "diffusers" and not info.text_encoder
    model = load_model(exported)
    request = GenerationRequest(prompt="a red circle", seed=1, steps=2)
    spec = LoraSpec(name="style", path=str(shipped), weight=1.0, sha256=info.sha256)
    base = np.asarray(generate_one(model, request).images[0].image)
    styled = np.asarray(generate_one(model, replace(request, loras=(spec,))).images[0].image)
    off = np.asarray(generate_one(model, replace(request, loras=(replace(spec, weight=0.0),))).images[0].image)
    assert not np.array_equal(styled, base) and np.array_equal(off, base)


def test_clip_stage_goes_on_from_a_model_folder_with_the_attribute_loss(trained, tmp_path):
    """`init_from` starts from a trained CLIP and its tokenizer; `attribute_weight` adds the heads' loss."""
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    _, clip, _, _ = trained
    config = tiny_config("clip", tmp_path, init_from=str(clip), attribute_weight=1.0, steps=2, sample_every=0)
    final = _run(config)
    records = [json.loads(line) for line in (tmp_path / "clip" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] > r["contrastive"] > 0 for r in records if "loss" in r)
    assert {"attribute_loss", "cell_acc", "relation_acc"} <= set(records[0])
    before = load_file(clip / "clip" / "model.safetensors")
    after = load_file(final / "clip" / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained from there
    assert (final / "tokenizer" / "tokenizer.json").read_text() == (clip / "tokenizer" / "tokenizer.json").read_text()
    caption = "a small red circle in the top left on a white background"
    start, now = (CLIPTokenizer.from_pretrained(d / "tokenizer") for d in (clip, final))
    assert now.model_max_length == start.model_max_length
    assert now(caption, padding="max_length").input_ids == start(caption, padding="max_length").input_ids


def test_unet_stage_encodes_under_the_stages_autocast_and_hands_on_fp32_latents(trained):
    """bf16 autocast for the frozen VAE (a quarter of a bf16 step in fp32): the draw stays close to fp32's."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL

    from generator.train.unet import UnetStage

    _, _, vae_dir, _ = trained
    vae = AutoencoderKL.from_pretrained(vae_dir / "vae", torch_dtype=torch.float32).eval()
    images, _ = training_batch(np.random.default_rng(0), 4, data_seed=0)
    draws = {}
    for name, autocast in (("fp32", torch.autocast("cpu", enabled=False)),
                           ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))):
        stage = SimpleNamespace(vae=vae, accelerator=SimpleNamespace(autocast=lambda a=autocast: a))
        stage.posterior = lambda images, stage=stage: UnetStage.posterior(stage, images)
        draws[name] = UnetStage.latents(stage, images, torch.Generator().manual_seed(0))
        assert draws[name].dtype == torch.float32
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(0))
    expected = (posterior.mean + posterior.std * noise) * vae.config.scaling_factor
    torch.testing.assert_close(draws["fp32"], expected)
    assert not torch.equal(draws["bf16"], expected)  # the encoder did run in bf16
    torch.testing.assert_close(draws["bf16"], expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


def test_attention_levels_choose_which_unet_levels_hold_transformers():
    from generator.train.unet import make_unet

    def blocks(**extra):
        config = load_config(CONFIGS / "unet.yaml", {"block_out_channels": [32, 32, 32], "norm_num_groups": 8,
                                                     "head_channels": 16, **extra})
        unet = make_unet(config, cross_attention_dim=32, latent_channels=4, sample_size=8)
        return unet, [type(b).__name__ for b in unet.down_blocks], [type(b).__name__ for b in unet.up_blocks]

    _, down, up = blocks(attention_levels=None)  # null: every level but the last, as the ninth model and earlier
    assert down == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert up == ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    unet, down, up = blocks(attention_levels=[1])  # the full-resolution level left to convolutions
    assert down == ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert up == ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    out = unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 999]), torch.randn(2, 5, 32)).sample
    assert out.shape == (2, 4, 8, 8)
    for bad in ("attention_levels=[3]", "attention_levels=[1, 1]", "attention_levels=1", "attention_levels=[true]"):
        with pytest.raises(ValueError, match="attention_levels"):
            load_config(CONFIGS / "unet.yaml", [bad])


def test_unet_stage_attends_with_plain_matmuls_that_match_sdpa(trained, tmp_path):
    """The stage swaps SDPA for the classic processor (faster on the CPU, BENCHMARKS.md); the outputs agree."""
    import copy

    from accelerate import Accelerator
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from generator.train.unet import UnetStage

    _, clip, vae, _ = trained
    stage = UnetStage(tiny_config("unet", tmp_path, clip_dir=str(clip), vae_dir=str(vae), mixed_precision="no"),
                      Accelerator(mixed_precision="no"))
    unet = stage.accelerator.unwrap_model(stage.unet).eval()
    processors = unet.attn_processors
    assert processors and all(type(p) is AttnProcessor for p in processors.values())
    sdpa = copy.deepcopy(unet)
    sdpa.set_attn_processor(AttnProcessor2_0())
    inputs = (torch.randn(3, 4, 16, 16), torch.tensor([0, 500, 999]), torch.randn(3, 16, 32))
    with torch.no_grad():
        torch.testing.assert_close(unet(*inputs).sample, sdpa(*inputs).sample, rtol=1e-4, atol=1e-5)


def test_pool_indices_use_every_entry_once_a_pass_in_a_new_order_each_pass():
    from generator.train.unet import pool_indices

    size, batch = 10, 4  # passes end mid-batch: step 2 reads the last 2 of pass 0 and the first 2 of pass 1
    read = np.concatenate([pool_indices(step, batch, size, seed=3) for step in range(5)])
    assert sorted(read[:10]) == list(range(10)) and sorted(read[10:20]) == list(range(10))
    assert not np.array_equal(read[:10], read[10:20])
    assert np.array_equal(pool_indices(2, batch, size, seed=3), read[8:12])  # the same step reads the same entries
    assert not np.array_equal(pool_indices(0, batch, size, seed=4), read[:4])


def test_latent_pool_is_the_posteriors_of_its_scenes_and_steps_do_not_encode(trained, tmp_path):
    from accelerate import Accelerator
    from diffusers import AutoencoderKL

    from generator.data.shapes64 import render
    from generator.train.data import to_tensor
    from generator.train.unet import UnetStage

    _, clip, vae_dir, _ = trained
    with pytest.raises(ValueError, match="latent_pool"):
        tiny_config("unet", tmp_path, latent_pool=-1)
    config = tiny_config("unet", tmp_path, clip_dir=str(clip), vae_dir=str(vae_dir), mixed_precision="no",
                         latent_pool=6, two_object_fraction=0.5)
    stage = UnetStage(config, Accelerator(mixed_precision="no"))
    pool = stage.pool
    assert len(pool.scenes) == len(pool.mean) == 6 and pool.mean.shape == pool.std.shape
    pairs = {(o.colour, o.shape) for scene in pool.scenes for o in scene.objects}
    assert not pairs & set(HELD_OUT_PAIRS)  # the pool is drawn from the training split
    vae = AutoencoderKL.from_pretrained(vae_dir / "vae", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        posterior = vae.encode(to_tensor(np.stack([np.asarray(render(s)) for s in pool.scenes]))).latent_dist
    scale = vae.config.scaling_factor
    torch.testing.assert_close(pool.mean, posterior.mean * scale)
    torch.testing.assert_close(pool.std, posterior.std * scale)

    def no_encoding(images):
        raise AssertionError("a step with a latent pool encoded a batch")

    stage.vae.encode = no_encoding
    losses = [stage.train_step(step, np.random.default_rng([0, step]))["loss"] for step in range(3)]
    assert all(np.isfinite(losses))


@pytest.mark.slow
def test_a_resumed_run_reads_the_same_latent_pool_in_the_same_order(trained, tmp_path):
    from safetensors.torch import load_file

    _, clip, vae, _ = trained
    common = dict(clip_dir=str(clip), vae_dir=str(vae), mixed_precision="no", latent_pool=6, sample_every=0)
    straight = _run(tiny_config("unet", tmp_path / "a", steps=4, **common))
    _run(tiny_config("unet", tmp_path / "b", steps=2, checkpoint_every=1, **common))
    resumed = _run(tiny_config("unet", tmp_path / "b", steps=4, checkpoint_every=1, **common), resume="latest")
    weights_a = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    weights_b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=0, atol=1e-6)
