"""Training configs: one dataclass per stage, read from YAML (values only) with command-line overrides.

A YAML file sets fields by name; a key the stage does not have is an error that lists the keys
it does have. Overrides are `key=value` words after the file, parsed as YAML scalars
(`steps=200`, `ema_decay=0.99`, `text_encoder_lr=null`). Booleans are YAML 1.2's, `true` and `false`
only: YAML 1.1 also reads yes/no/on/off as booleans, which made `mixed_precision=no` the boolean False.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

BOOL_TAG = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans (`true`/`false`, any case): `no` stays the string "no"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


@dataclass
class CommonConfig:
    stage: str = ""
    output_dir: str = "var/train/run"
    seed: int = 0
    data_seed: int = 0  # the shapes64 training split's seed
    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"  # constant | cosine (decays to lr_min_ratio × learning_rate after warm-up)
    lr_min_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 10
    sample_every: int = 500  # a sample grid every this many steps (and at the end); 0: only at the end
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    threads: int = 0  # torch intra-op threads on the CPU; 0: torch's default
    # no | bf16 | fp16 | auto: Accelerate's autocast. bf16 runs fast on AVX-512 BF16 CPUs and slow elsewhere;
    # auto takes bf16 where it is fast (a CUDA GPU with bf16, a CPU with AVX-512 BF16 or AMX) and no elsewhere.
    mixed_precision: str = "no"


@dataclass
class ClipConfig(CommonConfig):
    """A small CLIP (text and image towers) trained contrastively on shapes64 caption–image pairs."""

    stage: str = "clip"
    learning_rate: float = 1e-3
    batch_size: int = 128
    hidden_size: int = 128  # both towers
    hard_negatives: float = 0.0  # fraction of a batch in (scene, position-changed scene) pairs; see train/data.py
    # Weight of a caption-only loss: linear heads on the text tower's pooled output must tell each attribute the
    # caption names (colours, shapes, size, cell, relation, background), so the encoder keeps every word's meaning.
    attribute_weight: float = 0.0
    layout_heads: bool = False  # also heads for the colour and shape at the top/left and bottom/right (two objects)
    init_from: str = ""  # a folder with clip/ and tokenizer/ (e.g. models/shapes64) to go on from; "" : new
    layers: int = 4
    heads: int = 4
    projection_dim: int = 128
    patch_size: int = 8
    max_tokens: int = 24  # the tokenizer's model_max_length (start and end tokens included)
    tokenizer_merges: int = 200


@dataclass
class VaeConfig(CommonConfig):
    """An `AutoencoderKL`: L1 + KL + perceptual loss on the trained CLIP image tower, optional patch discriminator."""

    stage: str = "vae"
    clip_dir: str = "var/train/clip/final"  # the CLIP stage's output: its image tower gives perceptual features
    learning_rate: float = 1e-3
    batch_size: int = 32
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    latent_channels: int = 4
    # Few channels per group: a group of one channel normalises away a flat background's level, and the
    # autoencoder then cannot tell white, gray and black apart (measured: L1 stuck at 0.6 with 32 groups of 32).
    norm_num_groups: int = 8
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.1
    perceptual_layers: list[int] = field(default_factory=lambda: [1, 2])  # CLIP vision hidden states compared
    disc_weight: float = 0.0  # 0 turns the patch discriminator off
    disc_start: int = 500  # the adversarial loss starts after this many steps
    disc_learning_rate: float = 2e-4
    eval_images: int = 256  # validation images whose reconstructions go through the attribute evaluator


@dataclass
class UnetConfig(CommonConfig):
    """A `UNet2DConditionModel` on the VAE's latents, conditioned on the CLIP text tower's hidden states."""

    stage: str = "unet"
    clip_dir: str = "var/train/clip/final"
    vae_dir: str = "var/train/vae/final"
    learning_rate: float = 5e-4
    batch_size: int = 64
    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 192])
    layers_per_block: int = 1
    # Channels per attention head; each block gets channels // head_channels heads. (diffusers' own
    # `attention_head_dim` argument is really a head count: 32 "dims" on 64 channels made 32 heads of
    # 2 channels, and attention took half of each training step.)
    head_channels: int = 32
    # The down levels (0 = the latent's full 16 x 16) whose blocks hold a transformer (self-attention, cross-attention
    # to the caption, feed-forward), mirrored in the up path; the middle block always holds one. null: every level
    # but the last. [1] leaves 16 x 16 to convolutions: a UNet-stage step about 1.4 x faster (BENCHMARKS.md).
    attention_levels: list[int] | None = None
    norm_num_groups: int = 16
    cross_attention_dim: int | None = None  # None: the text encoder's hidden size
    # Noise schedule and objective.
    beta_schedule: str = "cosine"  # linear | scaled_linear | cosine
    beta_start: float = 0.00085  # linear and scaled_linear only
    beta_end: float = 0.012
    zero_terminal_snr: bool = True  # rescale betas so the last step is pure noise (Lin et al. 2024)
    prediction_type: str = "v_prediction"  # epsilon | v_prediction
    offset_noise: float = 0.0
    cond_dropout: float = 0.1  # captions replaced by "" for classifier-free guidance
    # Share of two-object scenes in a batch: a sampling weight over the training split (whose own mix, 30%, is
    # the spec's and stays unchanged); null keeps the split's mix.
    two_object_fraction: float | None = None
    # Share of each batch whose timesteps are drawn from [high_noise_from, 1000) instead of [0, 1000): the steps
    # where the sampler decides the layout (docs/experiments, experiment 23). 0 draws every timestep uniformly.
    high_noise_fraction: float = 0.0
    high_noise_from: int = 600
    # 0: every batch is drawn fresh and VAE-encoded (a quarter to a third of an fp32 step, a tenth of a bf16 one,
    # BENCHMARKS.md). N > 0: N
    # training scenes are drawn and encoded once, when the stage starts, and batches are read from them in passes,
    # each pass a fresh order; every use still draws its own latent from the stored posterior and its own caption.
    latent_pool: int = 0
    init_from: str = ""  # a model folder whose UNet to start from (block settings then come from it), "" : new
    train_text_encoder: bool = False
    text_encoder_lr: float = 1e-4
    ema_decay: float = 0.999
    # The exported model's defaults (generator.json) and the sample grids' settings.
    default_scheduler: str = "ddim"
    default_steps: int = 20
    default_guidance_scale: float = 4.0
    sample_prompts: int = 16
    export_dir: str = ""  # also write the final fp16 diffusers folder here ("" : only under output_dir/model)

    def __post_init__(self):
        levels = self.attention_levels
        if levels is not None and (not isinstance(levels, list) or len(set(levels)) != len(levels) or any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self.block_out_channels)
                for i in levels)):
            raise ValueError(f"attention_levels should be null or a list of distinct down levels in "
                             f"[0, {len(self.block_out_channels)}), got {levels!r}")
        share = self.two_object_fraction
        if share is not None and (isinstance(share, (bool, str)) or not 0 <= share <= 1):
            raise ValueError(f"two_object_fraction should be a number in [0, 1] or null, got {share!r}")
        if isinstance(self.latent_pool, bool) or not isinstance(self.latent_pool, int) or self.latent_pool < 0:
            raise ValueError(f"latent_pool should be a whole number of scenes, 0 for none, got {self.latent_pool!r}")
        share = self.high_noise_fraction
        if isinstance(share, (bool, str)) or not 0 <= share <= 1:
            raise ValueError(f"high_noise_fraction should be a number in [0, 1], got {share!r}")
        if isinstance(self.high_noise_from, bool) or not isinstance(self.high_noise_from, int) \
                or not 0 <= self.high_noise_from < 1000:
            raise ValueError(f"high_noise_from should be a timestep in [0, 1000), got {self.high_noise_from!r}")


@dataclass
class TinyVaeConfig(CommonConfig):
    """An `AutoencoderTiny` distilled from a model's `AutoencoderKL`: the fast path's cheap decoder."""

    stage: str = "tiny_vae"
    model_dir: str = "models/shapes64"  # the model it is for: its vae/ is the teacher, its clip/ the perceptual net
    learning_rate: float = 1e-3
    batch_size: int = 32
    channels: int = 32  # every block's width
    blocks_per_level: int = 2
    perceptual_weight: float = 0.1
    perceptual_layers: list[int] = field(default_factory=lambda: [1, 2])
    eval_images: int = 256
    export_dir: str = ""  # also copy tiny_vae/ into this model folder ("" : only under output_dir/final)


@dataclass
class LoraConfig(CommonConfig):
    """A LoRA (peft) on an exported model's UNet that teaches it a style its training data never had: the colour
    words drawn in another palette (shapes64.PALETTES). Only the LoRA's factors train; the model stays as it is."""

    stage: str = "lora"
    model_dir: str = "models/shapes64"  # the exported model it adapts (its UNet, text encoder, VAE, schedule)
    palette: str = "hue_step"  # the style: shapes64.PALETTES
    rank: int = 8
    alpha: float = 8.0  # the LoRA's scale is alpha / rank
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    learning_rate: float = 1e-3
    batch_size: int = 32
    steps: int = 600
    warmup_steps: int = 20
    two_object_fraction: float | None = 0.5
    latent_pool: int = 4000  # training scenes drawn in the palette and encoded once
    cond_dropout: float = 0.1
    sample_prompts: int = 16
    export_path: str = ""  # also copy the LoRA file here ("" : only under output_dir/final)


STAGES: dict[str, type[CommonConfig]] = {
    "clip": ClipConfig, "vae": VaeConfig, "unet": UnetConfig, "tiny_vae": TinyVaeConfig, "lora": LoraConfig,
}


def parse_overrides(words: list[str]) -> dict:
    overrides = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"an override must read key=value, got {word!r}")
        overrides[key] = _load_yaml(value)
    return overrides


def build_config(values: dict) -> CommonConfig:
    """The stage's config from a dict of values; unknown keys and wrong types are errors."""
    stage = values.get("stage")
    if stage not in STAGES:
        raise ValueError(f"config needs `stage`, one of {', '.join(STAGES)}; got {stage!r}")
    config_class = STAGES[stage]
    known = {f.name: f for f in fields(config_class)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) for stage {stage}: {', '.join(unknown)}; known keys: {', '.join(known)}")
    config = config_class(**values)
    defaults = config_class()
    for name in values:  # YAML gives ints for floats (1 for 1.0); refuse strings for numbers and the like
        expected, got = getattr(defaults, name), getattr(config, name)
        if isinstance(expected, float) and isinstance(got, int) and not isinstance(got, bool):
            setattr(config, name, float(got))
        elif expected is not None and got is not None and not _same_kind(expected, got):
            raise ValueError(f"{name} should be {type(expected).__name__}, got {got!r}")
    return config


def _same_kind(expected, got) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool):
        return isinstance(expected, bool) and isinstance(got, bool)
    return isinstance(got, type(expected))


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> CommonConfig:
    values = {}
    if path is not None:
        values = _load_yaml(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config is a mapping of key: value")
    extra = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    return build_config({**values, **extra})


def config_yaml(config: CommonConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
