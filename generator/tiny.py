"""Make a small, randomly initialised model folder in the diffusers Stable Diffusion layout.

The folder has the same parts as an SD 1.x checkpoint (tokenizer, text encoder, UNet, VAE,
scheduler, `model_index.json`), so everything that loads SD 1.x loads it, but it builds in
seconds on a CPU. The tokenizer's byte-pair merges are learned from a small word list
(`generator.text.make_clip_tokenizer`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from generator.text import make_clip_tokenizer


@dataclass
class TinyModelConfig:
    """Sizes of the tiny model. The defaults build in about a second and run a step in milliseconds."""

    sample_size: int = 64  # image side in pixels; the UNet works on sample_size / vae_factor
    text_hidden_size: int = 32
    text_layers: int = 2
    text_heads: int = 2
    max_position_embeddings: int = 77
    unet_channels: tuple[int, ...] = (32, 64)
    unet_layers_per_block: int = 1
    unet_attention_head_dim: int = 8
    vae_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    # An inpainting checkpoint's UNet also sees the mask (1 channel) and the masked image's latents (latent_channels)
    inpainting: bool = False
    vocab_merges: int = 400
    seed: int = 0
    scheduler: dict = field(
        default_factory=lambda: {
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000,
            "prediction_type": "epsilon",
            "clip_sample": False,
            "set_alpha_to_one": False,
            "steps_offset": 1,
        }
    )


def make_tiny_model(out_dir: str | Path, config: TinyModelConfig | None = None) -> Path:
    """Write a randomly initialised SD-layout model folder to `out_dir` and return its path."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config = config or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    tokenizer = make_clip_tokenizer(num_merges=config.vocab_merges)
    tokenizer.save_pretrained(out / "tokenizer")

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_hidden_size,
            intermediate_size=4 * config.text_hidden_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="quick_gelu",
        )
    )
    text_encoder.save_pretrained(out / "text_encoder")

    vae_factor = 2 ** (len(config.vae_channels) - 1)
    channels = list(config.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=config.sample_size // vae_factor,
        in_channels=2 * config.latent_channels + 1 if config.inpainting else config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=channels,
        layers_per_block=config.unet_layers_per_block,
        down_block_types=["CrossAttnDownBlock2D"] * (len(channels) - 1) + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (len(channels) - 1),
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=config.unet_attention_head_dim,
        norm_num_groups=min(32, channels[0]),
    )
    unet.save_pretrained(out / "unet")

    vae_channels = list(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(vae_channels),
        up_block_types=["UpDecoderBlock2D"] * len(vae_channels),
        block_out_channels=vae_channels,
        latent_channels=config.latent_channels,
        norm_num_groups=min(32, vae_channels[0]),
        sample_size=config.sample_size,
    )
    vae.save_pretrained(out / "vae")

    DDIMScheduler(**config.scheduler).save_pretrained(out / "scheduler")

    write_model_index(out)
    tiny_config = asdict(config)
    (out / "tiny_config.json").write_text(json.dumps(tiny_config, indent=2) + "\n")
    return out


def write_model_index(out: Path, scheduler_class: str = "DDIMScheduler") -> None:
    """`model_index.json` of an SD-layout folder (no safety checker or feature extractor)."""
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (Path(out) / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
