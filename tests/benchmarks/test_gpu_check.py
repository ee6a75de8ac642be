"""scripts/gpu_check.sh's dry run on the CPU: every step of the GPU check, tiny, and the figures it writes.

The GPU run itself needs a GPU (docs/gpu.md); this checks that its steps still run on today's code and that a
failing or hanging step is recorded and the run goes on.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.servers  # an API process and a Celery worker, on SQLite and the file broker
@pytest.mark.slow
def test_the_dry_run_writes_every_steps_figures(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_PYTHON": sys.executable, "OUT": str(out)}
    env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["failed_steps"] == []
    assert list(report["steps"]) == ["environment", "parity_fp32", "parity_fp16", "worker", "bench_eager"]
    assert all(step["status"] == "ok" for step in report["steps"].values())
    assert report["steps"]["environment"]["figures"]["torch"]

    summary = report["summary"]
    expected = [
        "parity_fp32_passed", "parity_fp32_max_difference_levels",
        "parity_fp16_passed", "parity_fp16_max_difference_levels",
        "worker_service_ready_seconds", "worker_first_job_seconds", "worker_second_job_seconds",
        "worker_second_job_run_seconds", "worker_prompt_attributes_correct",
        "stock_3_steps_seconds", "stock_2_steps_seconds", "stock_step_ms",
        "ours_3_steps_seconds", "ours_2_steps_seconds", "ours_step_ms", "ours_3_steps_speedup_vs_stock",
        "ours-channels-last_3_steps_seconds", "ours-channels-last_3_steps_speedup_vs_stock",
    ] + [f"{step}_seconds" for step in report["steps"]]
    missing = [key for key in expected if not isinstance(summary.get(key), int | float)]
    assert not missing, f"not numeric in the summary: {missing}; summary: {summary}"
    assert all(isinstance(value, int | float) for value in summary.values())
    assert summary["parity_fp32_passed"] == summary["parity_fp16_passed"] == 2  # the dry run's two parity tests
    assert summary["parity_fp32_max_difference_levels"] <= 1 and summary["parity_fp16_max_difference_levels"] <= 4
    # The project's loop and stock diffusers ran the same modules: the same picture.
    bench = report["steps"]["bench_eager"]["figures"]
    assert bench["paths"]["ours"]["steps"]["3"]["max_pixel_difference_vs_stock"] <= 1

    assert Image.open(out / "worker.png").size == (64, 64)
    ran_on = report["steps"]["worker"]["figures"]["manifest"]  # the worker's own record, from the PNG
    assert (ran_on["device_type"], ran_on["dtype"]) == ("cpu", "float32")
    assert "loaded model shapes64" in (out / "worker.log").read_text()
    assert "POST /api/v1/jobs/" in (out / "api.log").read_text()
    log = (out / "gpu_check.log").read_text()
    assert all(f"==== {step}:" in log for step in report["steps"])


def test_a_failing_or_hanging_step_is_recorded_and_the_run_goes_on(tmp_path):
    gpu_check = load_gpu_check()
    log = tmp_path / "log"
    failing = gpu_check.Step("fails", limit=10, expected=1, command=[sys.executable, "-c", "raise SystemExit(3)"])
    hanging = gpu_check.Step(
        "hangs", limit=10, expected=1, command=[sys.executable, "-c", "import time; time.sleep(60)"]
    )
    assert gpu_check.run_step(failing, 10, log)[0] == "failed"
    status, seconds, reason = gpu_check.run_step(hanging, 1, log)
    assert status == "timed_out" and seconds < 10 and "stopped after 1 s" in reason
    assert "==== fails:" in log.read_text() and "==== hangs:" in log.read_text()


def test_the_summary_compares_each_path_with_eager_stock():
    gpu_check = load_gpu_check()

    def path(seconds_50, seconds_20, **extra):
        return {"steps": {"50": {"median_image_seconds": seconds_50}, "20": {"median_image_seconds": seconds_20}},
                "step_seconds": 0.02, **extra}

    outcomes = {
        "bench_eager": gpu_check.Outcome(
            "ok", 60, figures={"paths": {"stock": path(2.0, 1.0), "ours": path(1.0, 0.5)}}
        ),
        "bench_stock-cudagraphs": gpu_check.Outcome(
            "ok", 90, figures={"paths": {"stock-cudagraphs": path(0.5, 0.25, compile_seconds=70.0)}}
        ),
        "bench_ours-compile": gpu_check.Outcome("skipped", reason="no time"),
    }
    summary = gpu_check.summarise(outcomes)
    assert summary["ours_50_steps_speedup_vs_stock"] == 2.0
    assert summary["stock-cudagraphs_20_steps_speedup_vs_stock"] == 4.0
    assert summary["stock-cudagraphs_compile_seconds"] == 70.0 and summary["ours_step_ms"] == 20.0
    assert summary["bench_ours-compile_ok"] == 0
