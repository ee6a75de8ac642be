"""Why the UNet stage does not use `torch.compile` or channels-last: gradients and speed of a training step.

Usage: python -m experiments.unet_compile [--levels 1] [--repeats 7] [--check-only] [--inductor KEY=VALUE ...]

Builds a new UNet of the built-in model's shape (channels 64/128/192, one layer per block, plain-matmul attention
as the stage sets it; `--levels 1` puts transformer blocks at 8 × 8 and 4 × 4 only, experiment 26's shape) and
checks one fp32 forward and backward three ways against the same step in float64: eager, eager on channels-last
weights, and compiled by inductor (`--inductor` sets `torch._inductor.config` keys first, e.g.
`max_fusion_size=1`), all at batch 64. A tensor's gradient counts as wrong when its relative error (L2) exceeds
1e-3; eager fp32 is at about 1e-6. Then it times the three as training steps (AdamW), taking turns, medians of
`--repeats`, and prints images/s and each one's ratio to eager (not with `--check-only`).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from generator.train.unet import make_unet


def make(levels: list[int] | None):
    from diffusers.models.attention_processor import AttnProcessor

    config = SimpleNamespace(block_out_channels=[64, 128, 192], head_channels=32, attention_levels=levels,
                             layers_per_block=1, cross_attention_dim=None, norm_num_groups=16)
    torch.manual_seed(0)
    unet = make_unet(config, 128, 4, 16)
    unet.set_attn_processor(AttnProcessor())
    return unet


def inputs(batch: int, dtype=torch.float32):
    """The same draws in either dtype."""
    generator = torch.Generator().manual_seed(1)
    noisy, target = (torch.randn(batch, 4, 16, 16, generator=generator) for _ in range(2))
    context = torch.randn(batch, 24, 128, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    return noisy.to(dtype), timesteps, context.to(dtype), target.to(dtype)


def gradients(unet, forward, noisy, timesteps, context, target) -> dict[str, torch.Tensor]:
    F.mse_loss(forward(noisy, timesteps, context).sample, target).backward()
    grads = {name: p.grad.double() for name, p in unet.named_parameters()}
    unet.zero_grad(set_to_none=True)
    return grads


def variants(unet) -> dict:
    """name → (module whose parameters train, the callable its step runs, input memory format)."""
    channels_last = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    compiled = copy.deepcopy(unet)
    return {
        "eager": (unet, unet, torch.contiguous_format),
        "eager, channels-last": (channels_last, channels_last, torch.channels_last),
        "inductor": (compiled, torch.compile(compiled), torch.contiguous_format),
    }


def check(unet, runs: dict, batch: int) -> None:
    exact = copy.deepcopy(unet).double()
    reference = gradients(exact, exact, *inputs(batch, torch.float64))
    print(f"| step (batch {batch}) | wrong gradient tensors (of {len(reference)}) | median relative error | "
          f"worst |\n|---|---|---|---|")
    for name, (module, forward, memory_format) in runs.items():
        noisy, timesteps, context, target = inputs(batch)
        grads = gradients(module, forward, noisy.contiguous(memory_format=memory_format), timesteps, context, target)
        errors = {n: ((grads[n] - g).norm() / g.norm().clamp_min(1e-30)).item() for n, g in reference.items()}
        worst = max(errors, key=errors.get)
        print(f"| {name} | {sum(e > 1e-3 for e in errors.values())} | {statistics.median(errors.values()):.1e} | "
              f"{worst} ({errors[worst]:.1e}) |", flush=True)


def speed(runs: dict, repeats: int, batch: int = 64) -> None:
    noisy, timesteps, context, target = inputs(batch)
    optimizers = {name: torch.optim.AdamW(module.parameters(), lr=1e-4) for name, (module, _, _) in runs.items()}
    times = {name: [] for name in runs}
    for i in range(repeats + 2):  # two rounds of warm-up
        for name, (_, forward, memory_format) in runs.items():
            start = time.perf_counter()
            loss = F.mse_loss(forward(noisy.contiguous(memory_format=memory_format), timesteps, context).sample, target)
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    eager = statistics.median(times["eager"])
    print(f"\n| training step (batch {batch}) | images/s | × eager |\n|---|---|---|")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"| {name} | {batch / median:.1f} | {eager / median:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="*", default=None, help="attention levels; default: 0 and 1")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--check-only", action="store_true", help="gradients only, no timing")
    parser.add_argument("--inductor", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    import torch._inductor.config as inductor

    for word in args.inductor:
        key, _, value = word.partition("=")
        setattr(inductor, key, eval(value))  # noqa: S307 (a benchmark's own command line)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, "
          f"attention levels {args.levels or [0, 1]}, inductor {args.inductor or 'defaults'}\n")
    unet = make(args.levels)
    runs = variants(unet)
    check(unet, runs, batch=64)
    if not args.check_only:
        speed(runs, args.repeats)


if __name__ == "__main__":
    main()
