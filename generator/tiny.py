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


@dataclass
class TinySDXLConfig:
    """Sizes of the tiny SDXL. Its two text encoders have different widths (as SDXL's 768 and 1280), so a mix-up of
    their order in the conditioning changes its shape and fails loudly instead of passing a test."""

    sample_size: int = 32  # image side in pixels
    text_hidden_size: int = 32  # text_encoder (CLIPTextModel)
    text_2_hidden_size: int = 64  # text_encoder_2 (CLIPTextModelWithProjection)
    projection_dim: int = 32  # text_encoder_2's pooled, projected output: the UNet's `text_embeds`
    text_layers: int = 2  # at least 2: SDXL conditions on the penultimate layer
    text_heads: int = 2
    max_position_embeddings: int = 77
    unet_channels: tuple[int, ...] = (32, 64)
    unet_layers_per_block: int = 1
    unet_attention_heads: tuple[int, ...] = (2, 4)  # diffusers' `attention_head_dim` is the head count
    unet_transformer_layers: tuple[int, ...] = (1, 2)
    addition_time_embed_dim: int = 8  # each of the 6 time ids is embedded to this many features
    vae_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    vae_scaling_factor: float = 0.13025  # SDXL's VAE
    inpainting: bool = False
    vocab_merges: int = 400
    seed: int = 0
    scheduler: dict = field(
        default_factory=lambda: {  # SDXL base's scheduler_config.json
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000,
            "prediction_type": "epsilon",
            "interpolation_type": "linear",
            "timestep_spacing": "leading",
            "steps_offset": 1,
            "use_karras_sigmas": False,
            "clip_sample": False,
            "set_alpha_to_one": False,
            "sample_max_value": 1.0,
        }
    )


def make_tiny_sdxl(out_dir: str | Path, config: TinySDXLConfig | None = None) -> Path:
    """Write a randomly initialised SDXL-layout folder (two tokenizers and text encoders, a `text_time` UNet) to
    `out_dir` and return its path; `diffusers.StableDiffusionXLPipeline.from_pretrained` loads it."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = config or TinySDXLConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    tokenizer = make_clip_tokenizer(num_merges=config.vocab_merges)
    tokenizer.save_pretrained(out / "tokenizer")
    # SDXL's second tokenizer pads with "!" rather than the end token: each encoder must get its own tokenizer's ids.
    tokenizer_2 = make_clip_tokenizer(num_merges=config.vocab_merges)
    tokenizer_2.pad_token = "!"
    tokenizer_2.save_pretrained(out / "tokenizer_2")

    def text_config(tokenizer, hidden_size: int, hidden_act: str, **extra) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act=hidden_act,
            **extra,
        )

    # As SDXL's: OpenAI's CLIP ViT-L text tower (quick_gelu), then OpenCLIP's bigG (gelu) with its projection.
    CLIPTextModel(text_config(tokenizer, config.text_hidden_size, "quick_gelu")).save_pretrained(out / "text_encoder")
    CLIPTextModelWithProjection(
        text_config(tokenizer_2, config.text_2_hidden_size, "gelu", projection_dim=config.projection_dim)
    ).save_pretrained(out / "text_encoder_2")

    vae_factor = 2 ** (len(config.vae_channels) - 1)
    channels = list(config.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=config.sample_size // vae_factor,
        in_channels=2 * config.latent_channels + 1 if config.inpainting else config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=channels,
        layers_per_block=config.unet_layers_per_block,
        # SDXL's layout: no attention at the highest resolution
        down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (len(channels) - 1),
        up_block_types=["CrossAttnUpBlock2D"] * (len(channels) - 1) + ["UpBlock2D"],
        attention_head_dim=list(config.unet_attention_heads),
        transformer_layers_per_block=list(config.unet_transformer_layers),
        use_linear_projection=True,
        # the prompt embeds are both encoders' hidden states side by side
        cross_attention_dim=config.text_hidden_size + config.text_2_hidden_size,
        addition_embed_type="text_time",
        addition_time_embed_dim=config.addition_time_embed_dim,
        # pooled text_embeds + 6 time ids (original size, crop's top left, target size), each embedded
        projection_class_embeddings_input_dim=config.projection_dim + 6 * config.addition_time_embed_dim,
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
        scaling_factor=config.vae_scaling_factor,
        force_upcast=True,  # SDXL's VAE overflows in fp16: pipelines decode it in fp32
    )
    vae.save_pretrained(out / "vae")

    # from_config keeps the keys Euler does not take (clip_sample …), which the other schedulers read, as SDXL's does
    EulerDiscreteScheduler.from_config(config.scheduler).save_pretrained(out / "scheduler")

    model_index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": _diffusers_version(),
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    (out / "tiny_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return out
