"""Which dtype and backend a worker runs a model with, chosen for the machine it is on.

    engine = choose_engine(device="auto", dtype="auto", backend="auto")
    engine.dtype, engine.backend, engine.reason      # "bf16", "compile", "the CPU has avx512_bf16 …"

The rules, from measurements in BENCHMARKS.md (SD 1.5 UNet on 2-core VMs):
- a CPU with AVX-512 BF16 or AMX: bf16 weights (oneDNN's bf16 matmul ran 2.3× fp32's) and the compiled UNet;
- any other CPU: fp32 (bf16 and fp16 are emulated there, about 100× slower) and the compiled UNet, which ran 1.49×
  eager fp32 on an AVX2-only VM;
- CUDA: fp16 (tensor cores, half the memory) and the eager UNet with SDPA; torch.compile on CUDA has not been
  measured here yet (scripts/gpu_check.sh measures it).
`compile` needs a C++ compiler for inductor's CPU kernels; without one, `auto` runs eager and says why. `openvino`
(asked for by name, CPU and fp32 only) converts the UNet to OpenVINO instead; on the AVX2-only VM of the issue that
filed this it ran the SD 1.5 UNet 1.67× eager fp32, against compile's 1.49×.

Asked for explicitly, a dtype or backend this machine cannot run well is refused with the reason (`EngineError`)
instead of running many times slower: the worker does not start.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
BACKEND_CHOICES = ("auto", "eager", "compile", "openvino")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either gives native bf16 matmul (oneDNN)
FP16_FLAGS = ("avx512_fp16", "amx_fp16")


class EngineError(ValueError):
    """An engine this machine cannot run (a missing compiler, a dtype its CPU lacks); the message says what."""


@dataclass(frozen=True)
class Engine:
    device: str  # "cpu", "cuda", "cuda:1"
    dtype: str  # "fp32", "bf16", "fp16"
    backend: str  # "eager" or "compile"
    reason: str  # why, in a sentence: logged by the worker, shown by health, recorded in manifests

    def as_dict(self) -> dict:
        return asdict(self)


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is not there."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_level(flags: frozenset[str]) -> str:
    """A short name for the CPU's vector unit, for logs: amx, avx512_bf16, avx512, avx2 or baseline."""
    for name, needs in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if needs in flags:
            return name
    return "baseline"


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use, or None."""
    for name in ("g++", "c++", "clang++"):
        if path := shutil.which(name):
            return path
    return None


def choose_engine(
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "auto",
    *,
    flags: frozenset[str] | None = None,
    cuda_available: bool | None = None,
    compiler: str | None | bool = True,
) -> Engine:
    """The engine for this machine; `flags`, `cuda_available` and `compiler` (True: look it up) are for tests.

    Raises EngineError for an explicit dtype or backend the machine cannot run, and ValueError for unknown names.
    """
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKEND_CHOICES)}")
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    if device.startswith("cuda"):
        if not cuda_available:
            raise EngineError(f"device {device!r} was asked for but no CUDA device is available")
        chosen_dtype = "fp16" if dtype == "auto" else dtype
        if backend == "openvino":
            raise EngineError("GENERATOR_BACKEND=openvino runs on the CPU; this worker's device is CUDA")
        if backend == "compile":
            return Engine(device, chosen_dtype, "compile", "compile asked for (GENERATOR_BACKEND=compile)")
        reason = "CUDA: fp16 on tensor cores" if dtype == "auto" else f"CUDA, {dtype} asked for"
        return Engine(device, chosen_dtype, "eager", reason + "; the eager UNet with SDPA")

    if backend == "openvino":
        return _openvino(device, dtype)

    flags = cpu_flags() if flags is None else flags
    level = cpu_level(flags)
    has_bf16 = any(flag in flags for flag in BF16_FLAGS)
    if dtype == "bf16" and not has_bf16:
        raise EngineError(
            f"GENERATOR_DTYPE=bf16 needs a CPU with {' or '.join(BF16_FLAGS)}; this one ({level}) has neither, and "
            "emulated bf16 runs about 100× slower than fp32. Use GENERATOR_DTYPE=auto or fp32."
        )
    if dtype == "fp16" and not any(flag in flags for flag in FP16_FLAGS):
        raise EngineError(
            f"GENERATOR_DTYPE=fp16 on a CPU needs {' or '.join(FP16_FLAGS)}; this one ({level}) has neither. "
            "Use GENERATOR_DTYPE=auto or fp32."
        )
    if dtype == "auto":
        chosen_dtype = "bf16" if has_bf16 else "fp32"
        why = f"the CPU has {level}: native bf16 matmul" if has_bf16 else f"the CPU has {level}, no native bf16: fp32"
    else:
        chosen_dtype, why = dtype, f"{dtype} asked for on a {level} CPU"

    found = cxx_compiler() if compiler is True else compiler or None
    if backend == "compile" and not found:
        raise EngineError("GENERATOR_BACKEND=compile needs a C++ compiler (g++, c++ or clang++) on the PATH")
    if backend == "eager":
        return Engine(device, chosen_dtype, "eager", why + "; eager asked for")
    if not found:
        return Engine(device, chosen_dtype, "eager", why + "; no C++ compiler for torch.compile: eager")
    return Engine(device, chosen_dtype, "compile", why + "; the UNet compiled with frozen weights")


def _openvino(device: str, dtype: str) -> Engine:
    """OpenVINO, asked for: the UNet converted for the CPU, in fp32 (the conversion here keeps fp32 weights)."""
    if device != "cpu":
        raise EngineError(f"GENERATOR_BACKEND=openvino runs on the CPU, not on {device!r}")
    if importlib.util.find_spec("openvino") is None:
        raise EngineError("GENERATOR_BACKEND=openvino needs the openvino package (pip install openvino); it is missing")
    if dtype not in ("auto", "fp32"):
        raise EngineError(f"GENERATOR_BACKEND=openvino runs fp32 here; GENERATOR_DTYPE={dtype} cannot go with it")
    return Engine(device, "fp32", "openvino", "openvino asked for: the UNet converted to OpenVINO, fp32")
