"""Figures that explain the diffusion process, written as PNGs with matplotlib (Agg, no display needed).

`python -m generator.evaluation.figures --model MODEL_DIR --out OUT_DIR [--prompt "..."] [--seed 0]` writes:

- `forward_noising.png`: one real shapes64 validation image noised in pixel space,
  x_t = √ᾱ_t · x0 + √(1 - ᾱ_t) · ε (DDPM, Ho et al. 2020, eq. 4), with one ε for every tile,
  at a few timesteps, one row per noise schedule (`SCHEDULES`).
- `noise_schedules.png`: log SNR and √ᾱ_t against t for the same schedules; the note says how
  much signal SD's `scaled_linear` schedule leaves at its last step.
- `denoising_trajectory.png`: one generation with the model: at several steps, the decoded x_t
  the UNet sees and its prediction of x0 at that step; then the final image.
- `guidance_strip.png`: the same prompt and seed at several classifier-free guidance scales.

The schedules' ᾱ come from diffusers' `DDPMScheduler`, not from a reimplementation. Generation
uses the model's default scheduler, size and steps (`model.defaults`); `--steps` overrides the steps.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from generator.data.shapes64 import PromptCase, render, validation_prompt_sets
from generator.loading import LoadedModel
from generator.pipeline import GenerationRequest, StepState, decode_latents, generate, generate_one, resolve_request

NUM_TRAIN_TIMESTEPS = 1000
# Name → DDPMScheduler settings. `linear` is DDPM's schedule (Ho et al. 2020); `scaled_linear` is Stable
# Diffusion's (linear in √β, 0.00085 → 0.012); `squaredcos_cap_v2` is the cosine schedule (Nichol & Dhariwal
# 2021); `zero SNR` rescales a schedule so that ᾱ at the last step is exactly 0 (Lin et al. 2024, Alg. 1).
SCHEDULES: dict[str, dict] = {
    "linear 1e-4–0.02 (DDPM)": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "linear 1e-4–0.02, zero SNR": {
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "rescale_betas_zero_snr": True,
    },
    "scaled_linear 0.00085–0.012 (SD)": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "scaled_linear 0.00085–0.012, zero SNR": {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "rescale_betas_zero_snr": True,
    },
    "cosine (squaredcos_cap_v2)": {"beta_schedule": "squaredcos_cap_v2"},
    "cosine, zero SNR": {"beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": True},
}
SD_SCHEDULE = "scaled_linear 0.00085–0.012 (SD)"
FORWARD_TIMESTEPS = (0, 100, 250, 500, 750, 999)
GUIDANCE_SCALES = (1.0, 2.0, 4.0, 7.5, 12.0)
TRAJECTORY_SNAPSHOTS = 6
DPI = 120


# --- Forward process ------------------------------------------------------------------------


def alphas_cumprod(schedule: str) -> np.ndarray:
    """ᾱ_t for t = 0 … 999 of a schedule in `SCHEDULES`, as diffusers' DDPMScheduler computes it."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known schedules: {', '.join(SCHEDULES)}")
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, **SCHEDULES[schedule])
    return scheduler.alphas_cumprod.double().numpy()


def noise_image(x0: np.ndarray, alpha_bar: float, noise: np.ndarray) -> np.ndarray:
    """x_t = √ᾱ · x0 + √(1 - ᾱ) · ε, the forward process q(x_t | x0) in closed form (Ho et al. 2020, eq. 4)."""
    if not 0 <= alpha_bar <= 1:
        raise ValueError(f"alpha_bar must be in [0, 1], got {alpha_bar}")
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise differ in shape: {x0.shape} and {noise.shape}")
    return np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * noise


def default_case() -> PromptCase:
    """The first single-object validation case with a large object in the centre (a clear picture to noise)."""
    cases = validation_prompt_sets()["single"]
    for case in cases:
        (shape,) = case.scene.objects
        if shape.size == "large" and shape.cell == "middle centre":
            return case
    return cases[0]


def image_to_array(image: Image.Image) -> np.ndarray:
    """An RGB image as floats in [-1, 1], (H, W, 3): the range the VAE and the diffusion process work in."""
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 127.5 - 1


def _to_display(x: np.ndarray) -> np.ndarray:
    return ((x + 1) / 2).clip(0, 1)  # values beyond [-1, 1] saturate, as a decoded image would


def forward_noising_figure(
    image: Image.Image, *, timesteps: Sequence[int] = FORWARD_TIMESTEPS, seed: int = 0, caption: str = ""
) -> Figure:
    """Rows: schedules; columns: timesteps. Every tile uses the same ε, so only ᾱ_t differs."""
    for t in timesteps:
        if not 0 <= t < NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"timesteps must be in [0, {NUM_TRAIN_TIMESTEPS - 1}], got {t}")
    x0 = image_to_array(image)  # (H, W, 3)
    noise = np.random.default_rng(seed).standard_normal(x0.shape)

    rows, columns = len(SCHEDULES), len(timesteps)
    figure = Figure(figsize=(1.5 * columns + 2.2, 1.6 * rows + 0.9), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for row, schedule in enumerate(SCHEDULES):
        alpha_bar = alphas_cumprod(schedule)
        for column, t in enumerate(timesteps):
            ax = axes[row, column]
            ax.imshow(_to_display(noise_image(x0, float(alpha_bar[t]), noise)), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"√ᾱ {np.sqrt(alpha_bar[t]):.3f} · √(1-ᾱ) {np.sqrt(1 - alpha_bar[t]):.3f}", fontsize=6)
            if row == 0:
                ax.set_title(f"t = {t}", fontsize=9)
            if column == 0:
                ax.set_ylabel(schedule.replace(", ", ",\n").replace(" (", "\n("), fontsize=7)
    title = "Forward noising in pixel space: x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε (one ε for all tiles)"
    figure.suptitle(title + (f"\nx0: “{caption}”" if caption else ""), fontsize=10)
    return figure


def noise_schedules_figure() -> Figure:
    """log SNR(t) = log(ᾱ_t / (1 - ᾱ_t)) and √ᾱ_t for every schedule, with a zoom on the last 100 steps."""
    figure = Figure(figsize=(15, 5.2), layout="constrained")
    log_snr_ax, signal_ax, tail_ax = figure.subplots(1, 3)
    t = np.arange(NUM_TRAIN_TIMESTEPS)
    for schedule in SCHEDULES:
        alpha_bar = alphas_cumprod(schedule)
        style = "--" if "zero SNR" in schedule else "-"
        with np.errstate(divide="ignore"):
            log_snr = np.log(alpha_bar) - np.log1p(-alpha_bar)  # -inf where ᾱ = 0: matplotlib leaves it out
        log_snr_ax.plot(t, log_snr, style, label=schedule)
        signal_ax.plot(t, np.sqrt(alpha_bar), style, label=schedule)
        tail_ax.plot(t[-100:], np.sqrt(alpha_bar[-100:]), style, marker=".", markersize=3, label=schedule)

    log_snr_ax.set(xlabel="timestep t", ylabel="log SNR = log(ᾱ / (1 - ᾱ))", title="Signal-to-noise ratio")
    signal_ax.set(xlabel="timestep t", ylabel="√ᾱ_t (weight of x0 in x_t)", title="Signal kept")
    tail_ax.set(xlabel="timestep t", ylabel="√ᾱ_t", title="The last 100 steps")
    for ax in (log_snr_ax, signal_ax, tail_ax):
        ax.grid(alpha=0.3)
    log_snr_ax.legend(fontsize=7)

    sd = alphas_cumprod(SD_SCHEDULE)[-1]
    note = (
        f"{SD_SCHEDULE} at t = {NUM_TRAIN_TIMESTEPS - 1}: √ᾱ = {np.sqrt(sd):.4f}, SNR = {sd / (1 - sd):.4f}; "
        "the last step still keeps some signal,\nso training never sees pure noise but sampling starts from it "
        "(Lin et al. 2024). Zero-SNR rescaling (dashed) makes ᾱ = 0 there: log SNR = -∞, not drawn."
    )
    tail_ax.annotate(
        f"SD keeps √ᾱ = {np.sqrt(sd):.3f}",
        xy=(NUM_TRAIN_TIMESTEPS - 1, np.sqrt(sd)),
        xytext=(-150, 40),
        textcoords="offset points",
        arrowprops={"arrowstyle": "->"},
        fontsize=8,
    )
    figure.suptitle("Noise schedules (ᾱ from diffusers' DDPMScheduler)\n" + note, fontsize=9)
    return figure


# --- Reverse process ------------------------------------------------------------------------


@dataclass
class Snapshot:
    """One step of a generation: the x_t the UNet saw at `timestep` and its prediction of x0 from it."""

    step: int  # 1..total
    total: int
    timestep: float
    noisy: Image.Image  # decoded x_t (the UNet's scaled input, i.e. √ᾱ·x0 + √(1-ᾱ)·ε in latent space)
    predicted: Image.Image  # decoded x̂0


def denoising_trajectory(
    model: LoadedModel, request: GenerationRequest, *, snapshots: int = TRAJECTORY_SNAPSHOTS
) -> tuple[list[Snapshot], Image.Image, GenerationRequest]:
    """Generate one image and keep `snapshots` evenly spaced steps; return them, the image and the resolved request.

    The step callback's state carries the UNet's input x_t of each step (already scaled by `scale_model_input`,
    so Euler's σ-space latents appear in the same √ᾱ·x0 + √(1-ᾱ)·ε form as DDIM's) and the step's predicted x̂0
    (`StepState.denoised`: the scheduler's own where it gives one, else from ᾱ at the step's timestep).
    """
    if request.num_images != 1:
        raise ValueError(f"a trajectory follows one image; num_images must be 1, got {request.num_images}")
    if snapshots < 1:
        raise ValueError(f"snapshots must be at least 1, got {snapshots}")
    request = resolve_request(model, request)
    chosen = {int(s) for s in np.linspace(1, request.steps, min(snapshots, request.steps)).round()}
    taken: list[Snapshot] = []

    def on_step(state: StepState) -> None:
        if state.step not in chosen or state.denoised is None:
            return
        pixels = decode_latents(model, torch.cat([state.model_input, state.denoised]).to(model.dtype))  # (2, H, W, 3)
        noisy, predicted = Image.fromarray(pixels[0]), Image.fromarray(pixels[1])
        taken.append(Snapshot(state.step, state.total, float(state.timestep), noisy, predicted))

    result = generate_one(model, request, callback=on_step)
    return taken, result.images[0].image, request


def denoising_trajectory_figure(
    snapshots: Sequence[Snapshot], final: Image.Image, request: GenerationRequest
) -> Figure:
    """Top row: decoded x_t at each chosen step; bottom row: decoded x̂0 from that x_t; last column: the output."""
    columns = len(snapshots) + 1
    figure = Figure(figsize=(1.9 * columns + 1, 4.9), layout="constrained")
    axes = figure.subplots(2, columns, squeeze=False)
    for column, snapshot in enumerate(snapshots):
        for row, image in enumerate((snapshot.noisy, snapshot.predicted)):
            axes[row, column].imshow(image, interpolation="nearest")
        axes[0, column].set_title(f"step {snapshot.step}/{snapshot.total}\nt = {snapshot.timestep:g}", fontsize=8)
    axes[0, -1].imshow(final, interpolation="nearest")
    axes[0, -1].set_title("output", fontsize=8)
    axes[1, -1].set_visible(False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("x_t (UNet input)", fontsize=8)
    axes[1, 0].set_ylabel("predicted x̂0", fontsize=8)
    figure.suptitle(
        f"Denoising trajectory: “{request.prompt}”\n{request.scheduler}, {request.steps} steps, "
        f"guidance {request.guidance_scale:g}, seed {request.seed}, {request.width}×{request.height}",
        fontsize=9,
    )
    return figure


def guidance_images(
    model: LoadedModel, request: GenerationRequest, scales: Sequence[float] = GUIDANCE_SCALES
) -> tuple[list[Image.Image], list[GenerationRequest]]:
    """One image per guidance scale, same prompt and seed, generated in one batched loop."""
    if not scales:
        raise ValueError("scales must hold at least one guidance scale")
    requests = [replace(request, guidance_scale=float(g)) for g in scales]
    results = generate(model, requests)
    return [result.images[0].image for result in results], [result.request for result in results]


def guidance_strip_figure(images: Sequence[Image.Image], requests: Sequence[GenerationRequest]) -> Figure:
    figure = Figure(figsize=(1.9 * len(images) + 0.5, 2.9), layout="constrained")
    axes = figure.subplots(1, len(images), squeeze=False)[0]
    for ax, image, request in zip(axes, images, requests):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"guidance {request.guidance_scale:g}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    first = requests[0]
    figure.suptitle(
        f"Classifier-free guidance: “{first.prompt}”\n{first.scheduler}, {first.steps} steps, seed {first.seed}",
        fontsize=9,
    )
    return figure


# --- Command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m generator.evaluation.figures", description="Write PNG figures that explain diffusion."
    )
    parser.add_argument("--model", type=Path, required=True, help="a diffusers-layout model folder on local disk")
    parser.add_argument("--out", type=Path, required=True, help="the folder for the PNGs")
    parser.add_argument("--prompt", help="default: a shapes64 validation prompt (the noised image's caption)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=list(GUIDANCE_SCALES))
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda when present)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    args = parser.parse_args(argv)

    from generator.loading import load_model
    from generator.model_info import ModelLoadError

    case = default_case()
    request = GenerationRequest(prompt=args.prompt or case.prompt, seed=args.seed, steps=args.steps)
    try:
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        request = resolve_request(model, request)
        for scale in args.guidance_scales:  # check them all before the first figure, not halfway through
            resolve_request(model, replace(request, guidance_scale=scale))
    except (ModelLoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    figures = {
        "forward_noising.png": lambda: forward_noising_figure(render(case.scene), seed=args.seed, caption=case.prompt),
        "noise_schedules.png": noise_schedules_figure,
        "denoising_trajectory.png": lambda: denoising_trajectory_figure(*denoising_trajectory(model, request)),
        "guidance_strip.png": lambda: guidance_strip_figure(*guidance_images(model, request, args.guidance_scales)),
    }
    for name, make in figures.items():
        path = args.out / name
        make().savefig(path, dpi=DPI)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
