"""The engine a worker picks for its machine (generator/backends.py), with the CPU's flags faked."""

import pytest

from generator.backends import EngineError, choose_engine, cpu_flags, cpu_level

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512_BF16 = AVX2 | {"avx512f", "avx512_bf16", "avx512_vnni"}
AMX = AVX512_BF16 | {"amx_bf16", "amx_tile", "amx_int8"}


@pytest.mark.parametrize(
    "flags, dtype, level",
    [(AVX2, "fp32", "avx2"), (AVX512_BF16, "bf16", "avx512_bf16"), (AMX, "bf16", "amx"),
     (frozenset(), "fp32", "baseline")],
)
def test_auto_takes_bf16_only_where_the_cpu_has_it(flags, dtype, level):
    engine = choose_engine("cpu", "auto", "auto", flags=flags, cuda_available=False, compiler="/usr/bin/g++")
    assert (engine.device, engine.dtype, engine.backend) == ("cpu", dtype, "compile")
    assert level in engine.reason and cpu_level(flags) == level


def test_auto_on_cuda_takes_fp16_eager():
    engine = choose_engine("auto", "auto", "auto", flags=AVX2, cuda_available=True, compiler=None)
    assert (engine.device, engine.dtype, engine.backend) == ("cuda", "fp16", "eager")


def test_without_a_compiler_auto_runs_eager_and_says_why():
    engine = choose_engine("cpu", "auto", "auto", flags=AVX2, cuda_available=False, compiler=None)
    assert engine.backend == "eager" and "no C++ compiler" in engine.reason


@pytest.mark.parametrize(
    "dtype, backend, flags, compiler, message",
    [
        ("bf16", "auto", AVX2, "/usr/bin/g++", "needs a CPU with avx512_bf16 or amx_bf16; this one \\(avx2\\)"),
        ("fp16", "auto", AVX512_BF16, "/usr/bin/g++", "fp16 on a CPU needs avx512_fp16 or amx_fp16"),
        ("auto", "compile", AVX512_BF16, None, "needs a C\\+\\+ compiler"),
    ],
)
def test_an_explicit_choice_the_machine_cannot_run_is_refused(dtype, backend, flags, compiler, message):
    with pytest.raises(EngineError, match=message):
        choose_engine("cpu", dtype, backend, flags=flags, cuda_available=False, compiler=compiler)


def test_explicit_choices_the_machine_runs_are_kept():
    engine = choose_engine("cpu", "fp32", "eager", flags=AMX, cuda_available=False, compiler="/usr/bin/g++")
    assert (engine.dtype, engine.backend) == ("fp32", "eager")
    with pytest.raises(EngineError, match="no CUDA device"):
        choose_engine("cuda", "auto", "auto", flags=AMX, cuda_available=False)
    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        choose_engine("cpu", "auto", "onnx", flags=AMX, cuda_available=False)


def test_openvino_is_fp32_on_the_cpu_and_refused_when_missing(monkeypatch):
    pytest.importorskip("openvino")
    engine = choose_engine("cpu", "auto", "openvino", flags=AMX, cuda_available=False)
    assert (engine.dtype, engine.backend) == ("fp32", "openvino")
    with pytest.raises(EngineError, match="runs fp32 here; GENERATOR_DTYPE=bf16"):
        choose_engine("cpu", "bf16", "openvino", flags=AMX, cuda_available=False)
    with pytest.raises(EngineError, match="runs on the CPU"):
        choose_engine("cuda", "auto", "openvino", flags=AMX, cuda_available=True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(EngineError, match="needs the openvino package"):
        choose_engine("cpu", "auto", "openvino", flags=AMX, cuda_available=False)


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: x\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()
