"""This CPU's peak for the engine's kinds of work, per dtype: matmul, 3×3 convolution (NCHW and channels-last).

Usage: python benchmarks/cpu_peak.py

The FLOP/s of a 1024³ matmul is the reference peak for "fraction of peak" figures; the convolution is one
SD 1.5 UNet block's shape at 256×256 images (320 channels, 32×32 latents, batch 2 for classifier-free guidance).
"""

import time
from functools import partial

import torch


def seconds(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        x = torch.randn(2, 320, 32, 32, dtype=dtype)
        conv = torch.nn.Conv2d(320, 320, 3, padding=1).to(dtype)
        conv_flops = 2 * 2 * 320 * 320 * 9 * 32 * 32
        with torch.inference_mode():
            matmul_s = seconds(partial(torch.matmul, a, b))
            conv_s = seconds(partial(conv, x))
            conv_cl = conv.to(memory_format=torch.channels_last)
            x_cl = x.to(memory_format=torch.channels_last)
            conv_cl_s = seconds(partial(conv_cl, x_cl))
        print(
            f"{str(dtype):15s} matmul 1024³: {matmul_s * 1e3:8.1f} ms = {2 * 1024**3 / matmul_s / 1e9:6.1f} GFLOP/s | "
            f"conv NCHW: {conv_s * 1e3:8.1f} ms = {conv_flops / conv_s / 1e9:6.1f} GFLOP/s | "
            f"conv channels-last: {conv_cl_s * 1e3:8.1f} ms = {conv_flops / conv_cl_s / 1e9:6.1f} GFLOP/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
