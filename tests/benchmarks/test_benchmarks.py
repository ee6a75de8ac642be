"""Every maintained benchmark runs, tiny, the way its docstring says: `python -m benchmarks.NAME` from the root.

The figures themselves are not checked (speed is never asserted by a test); what is checked is that each command
still runs on today's code and prints or writes the figures BENCHMARKS.md quotes.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(*args: str, timeout: float = 600) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_cpu_peak_prints_gflops_per_kernel():
    out = run_benchmark("benchmarks.cpu_peak", "--dtype", "fp32", "--repeats", "1")
    line = next(line for line in out.splitlines() if line.startswith("torch.float32"))
    figures = [float(x) for x in re.findall(r"([\d.]+) GFLOP/s", line)]
    assert len(figures) == 3 and all(f > 0 for f in figures), line


@pytest.mark.slow
def test_bench_engine_tiny_matches_stock_diffusers(tmp_path):
    out_json = tmp_path / "engine.json"
    out = run_benchmark(
        "benchmarks.bench_engine", "--size", "tiny", "--steps", "2", "--repeats", "1", "--json", str(out_json)
    )
    assert "speed-up" in out or "|" in out
    results = json.loads(out_json.read_text())
    assert results["command"].startswith("python ")
    (row,) = results["results"]
    assert row["model"] == "tiny"
    # The project's loop and stock diffusers run the same modules: their images agree (the benchmark's own check).
    assert all(d <= 1 for d in row["max_pixel_difference_vs_stock"].values()), row["max_pixel_difference_vs_stock"]


@pytest.mark.slow
def test_image_modes_tiny_measures_decode_memory_and_the_hires_pass(tmp_path):
    out_json = tmp_path / "image_modes.json"
    out = run_benchmark(
        "benchmarks.image_modes", "--size", "tiny", "--side", "64", "--tile", "32", "--repeats", "1",
        "--json", str(out_json),
    )
    assert "| whole image |" in out and "| hires, latent |" in out, out
    results = json.loads(out_json.read_text())
    assert results["command"].startswith("python -m benchmarks.image_modes")
    decode = results["decode"]
    assert decode["tiles"] == 9  # 32 latents, tiles of 16 overlapping by 4: starts 0, 12, 16 on each axis
    for name in ("whole", "tiled"):
        variant = decode["variants"][name]
        assert variant["median_seconds"] > 0
        # Each decode ran in its own process: its RSS before the decode and its peak are that process's own.
        assert 0 < variant["median_rss_before_mib"] <= variant["median_peak_rss_mib"], variant
        assert variant["median_decode_mib"] >= 0
    assert 0 <= decode["mean_pixel_difference"] <= decode["max_pixel_difference"] <= 255
    hires = results["hires"]["variants"]
    assert hires["first pass only"]["median_seconds"] > 0
    for name in ("hires, latent", "hires, lanczos"):
        assert hires[name]["output_side"] == 64 and hires[name]["second_pass_iterations"] == 2, hires[name]
        assert hires[name]["second_pass_seconds"] > 0 and hires[name]["second_over_first"] > 0


@pytest.mark.slow
def test_latent_pool_speed_runs_on_the_builtin_model():
    out = run_benchmark(
        "benchmarks.latent_pool", "speed", "--repeats", "1", "--precision", "no", "--pool-scenes", "8",
        "batch_size=2", "sample_prompts=1",
    )
    assert re.search(r"\| latent pool \| [\d.]+ \| [\d.]+ \|", out), out
    assert "speed-up:" in out


@pytest.mark.servers
def test_bench_service_latency_on_postgres_and_redis():
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        pytest.fail("DATABASE_URL and REDIS_URL must name the real servers (make test sets them)")
    out = run_benchmark("benchmarks.bench_service", "--latency", "--latency-jobs", "2")
    assert "POST → the worker's first step, idle (2 jobs)" in out, out
    # Every part was measured: the progress events of both steps reached Redis, and the job row has its times.
    for part in ("first_step", "answer", "request", "to_claim", "encode", "step"):
        assert re.search(rf"^\| {part} \| -?[\d.]+ \| -?[\d.]+ \|$", out, re.MULTILINE), (part, out)


@pytest.mark.servers
def test_bench_service_open_loop_and_profile_on_postgres_and_redis():
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        pytest.fail("DATABASE_URL and REDIS_URL must name the real servers (make test sets them)")
    out = run_benchmark(
        "benchmarks.bench_service", "--open-loop", "20", "--open-loop-seconds", "3", "--servers", "asgi", "--profile",
        "--profile-seconds", "3",
    )
    # 20 clients × 3 s, every answer a 200 (an error would be counted apart).
    found = re.search(r"GET job \(asgi\), 20 clients once a second for 3 s: .* (\d+) requests, (\d+) errors", out)
    assert found and int(found.group(1)) == 60 and found.group(2) == "0", out
    # The profile sampled the API while wrk read a finished job: its reads went through the kept answers.
    kept = r"^\| \d+% \| `StatusReads.__call__ \(diffusion_api/jobs/status_reads.py\)` \|$"
    assert re.search(kept, out, re.MULTILINE), out


@pytest.mark.servers
def test_bench_load_runs_locust_against_two_workers():
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        pytest.fail("DATABASE_URL and REDIS_URL must name the real servers (make test sets them)")
    out = run_benchmark("benchmarks.bench_load", "--users", "4", "--seconds", "10", "--steps", "4")
    row = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert row["jobs_per_min"] > 0 and row["error_rate"] == 0, row
    assert {"POST /api/v1/jobs/", "GET /api/v1/jobs/{id}/", "GET /api/v1/jobs/{id}/events", "job succeeded"} <= set(
        row["routes"]
    ), row
    assert set(row["cpu_per_second"]) == {"api", "worker0", "worker1", "locust"}, row


@pytest.mark.servers
def test_bench_service_event_streams_on_postgres_and_redis():
    # Tiny: 20 streams on 2 short jobs. Every stream must see progress and its end event.
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        pytest.fail("DATABASE_URL and REDIS_URL must name the real servers (make test sets them)")
    out = run_benchmark("benchmarks.bench_service", "--streams", "20", "--stream-jobs", "2", "--stream-steps", "40")
    found = re.search(r"20 event streams over 2 jobs: (\d+) progress events, .* p99 [\d.]+ ms; (\d+) streams got", out)
    assert found and int(found.group(1)) >= 20 and int(found.group(2)) == 20, out
    assert re.search(r"GET job, 10 connections, with the streams: p50 [\d.]+ ms", out), out


def test_bench_per_image_times_stock_exact_and_fewer_evaluations(tmp_path):
    from benchmarks import bench_per_image
    from generator import TinyModelConfig, make_tiny_model

    folder = make_tiny_model(tmp_path / "tiny", TinyModelConfig(sample_size=16))
    out = tmp_path / "per-image.json"
    assert bench_per_image.main(["--model", str(folder), "--side", "32", "--steps", "4", "--repeats", "1",
                                 "--no-compile", "--dtype", "fp32", "--fewer", "0.5:3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    paths = report["paths"]
    assert paths["stock"]["unet_rows"] == {"full": 10, "shallow": 0}  # PNDM: 5 iterations, 2 rows each
    assert paths["fewer 0.5:3"]["unet_rows"] == {"full": 3, "shallow": 5}  # 3 of 5 guided; steps 0 and 3 full
    assert paths["exact"]["psnr_vs_stock"] > 40
    assert paths["fewer 0.5:3"]["psnr_vs_stock"] < paths["exact"]["psnr_vs_stock"]
    assert all(p["seconds_per_image"] > 0 and p["achieved_gflops"] > 0 for p in paths.values())


def test_evals_quality_compares_settings_with_the_exact_path(tmp_path):
    from benchmarks import evals_quality

    assert evals_quality.main(["--prompts", "1", "--images-per-prompt", "1", "--scheduler", "ddim", "--steps", "20",
                               "--configs", "exact", "cutoff=0.5", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "evals.json").read_text())
    exact, cut = report["rows"]
    assert exact["fid_vs_exact"] == pytest.approx(0, abs=1e-6) and exact["unet_rows_full"] == 40
    assert cut["unet_rows_full"] == 30 and cut["psnr_vs_exact"] > 10 and report["fid_noise_floor"] > 0
    assert "| guidance_cutoff=0.5 | ddim, 20 |" in (tmp_path / "evals.md").read_text()
