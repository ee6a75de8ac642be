"""`mixed_precision: auto` picks bf16 only where it is fast; other values pass through or are refused."""

import pytest

from generator.train import loop


@pytest.mark.parametrize(("fast", "expected"), [(True, "bf16"), (False, "no")])
def test_auto_takes_bf16_only_where_it_is_fast(monkeypatch, fast, expected):
    monkeypatch.setattr(loop, "fast_bf16", lambda: fast)
    assert loop.resolve_precision("auto") == expected


@pytest.mark.parametrize("value", ["no", "bf16", "fp16"])
def test_explicit_precisions_are_kept(monkeypatch, value):
    monkeypatch.setattr(loop, "fast_bf16", lambda: False)
    assert loop.resolve_precision(value) == value


def test_an_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="mixed_precision"):
        loop.resolve_precision("fp8")


def test_fast_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    monkeypatch.setattr(loop.torch.cuda, "is_available", lambda: False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx avx2 fma\n")
    assert not loop.fast_bf16(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu avx avx2 avx512f avx512_bf16\n")
    assert loop.fast_bf16(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert loop.fast_bf16(cpuinfo)
    assert not loop.fast_bf16(tmp_path / "missing")
