"""This CPU's peak for the engine's kinds of work, per dtype: matmul, 3×3 convolution (NCHW and channels-last).

Usage: python -m benchmarks.cpu_peak [--dtype fp32|bf16|both] [--repeats 5]

The FLOP/s of a 1024³ matmul is the reference peak for "fraction of peak" figures; the convolution is one
SD 1.5 UNet block's shape at 256×256 images (320 channels, 32×32 latents, batch 2 for classifier-free guidance).
`bench_engine.py --fast` calls `measure` in its own run, so its fraction of peak compares like with like.
"""

import argparse
import statistics
import time
from functools import partial

import torch

CONV_FLOPS = 2 * 2 * 320 * 320 * 9 * 32 * 32
MATMUL_FLOPS = 2 * 1024**3


def seconds(fn, repeats: int = 5) -> float:
    """Median seconds of `repeats` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(dtype: torch.dtype, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a 1024³ matmul and of the 3×3 convolution, NCHW and channels-last (medians of `repeats`)."""
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    x = torch.randn(2, 320, 32, 32, dtype=dtype)
    conv = torch.nn.Conv2d(320, 320, 3, padding=1).to(dtype)
    with torch.inference_mode():
        matmul_s = seconds(partial(torch.matmul, a, b), repeats)
        conv_s = seconds(partial(conv, x), repeats)
        conv_cl = conv.to(memory_format=torch.channels_last)
        conv_cl_s = seconds(partial(conv_cl, x.to(memory_format=torch.channels_last)), repeats)
    return {
        "matmul": MATMUL_FLOPS / matmul_s / 1e9,
        "conv": CONV_FLOPS / conv_s / 1e9,
        "conv_channels_last": CONV_FLOPS / conv_cl_s / 1e9,
    }


DTYPES = {"fp32": (torch.float32,), "bf16": (torch.bfloat16,), "both": (torch.float32, torch.bfloat16)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=list(DTYPES), default="both")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per kernel after one warm-up")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    for dtype in DTYPES[args.dtype]:
        gflops = measure(dtype, args.repeats)
        print(
            f"{str(dtype):15s} matmul 1024³: {gflops['matmul']:6.1f} GFLOP/s | conv NCHW: {gflops['conv']:6.1f} GFLOP/s"
            f" | conv channels-last: {gflops['conv_channels_last']:6.1f} GFLOP/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
