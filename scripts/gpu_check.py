"""The GPU check's steps, each in its own process with a time limit, and their figures in one JSON (docs/gpu.md).

    python scripts/gpu_check.py --out DIR [--device cuda|cpu] [--budget SECONDS]     # every step, in order
    python scripts/gpu_check.py environment --json FILE                                # one step's own process
    python scripts/gpu_check.py worker --json FILE --device cuda --dtype fp16 [--steps N] [--png FILE] [--log FILE]

scripts/gpu_check.sh is the way in: it makes the carried packages importable first. The steps, in order:

1. environment        nvidia-smi, Python, torch, CUDA, cuDNN and library versions, the GPU's name and memory
2. parity_<dtype>     tests/generator/test_parity.py on the device, in fp32 and fp16 (GENERATOR_TEST_DEVICE,
                      GENERATOR_TEST_DTYPE), with each test's largest pixel difference from stock diffusers
3. worker             a real API process and Celery worker on embedded defaults (SQLite, the file broker, a fresh
                      VAR_DIR) with GENERATOR_DEVICE and GENERATOR_DTYPE set, the built-in model, two jobs over HTTP
4. bench_eager        benchmarks.bench_gpu: stock diffusers against the project's loop, fp16, SD 1.5 size, 512²
5. bench_<variant>    torch.compile variants, each started only while enough of the budget is left

Every step is bounded: a step gets at most its own limit and never more than the budget leaves after the later
required steps' expected time. A step that fails or runs out of time is recorded with its reason and the next
one runs. $OUT gets gpu_check.json (the figures: `summary` is flat name → number), gpu_check.log (every step's
output), nvidia-smi.txt, worker.log and worker.png. The exit status is 1 if any step did not end "ok".
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a small red circle in the top left on a white background"  # the built-in model's grammar
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # GENERATOR_DTYPE → the manifest's dtype


@dataclass(frozen=True)
class Profile:
    """What the run does on one kind of device."""

    budget: float  # seconds for every step together
    parity_dtypes: tuple[str, ...]
    parity_filter: str  # pytest -k; empty: every parity test
    worker_dtype: str
    worker_steps: int | None  # None: the built-in model's default (20)
    bench_size: str
    bench_dtype: str
    bench_steps: tuple[int, ...]
    bench_repeats: int
    compile_variants: tuple[str, ...] = ()


PROFILES = {
    # One H100: every step within 440 s, so the whole run (unpacking included) stays under 8 minutes.
    "cuda": Profile(
        budget=440,
        parity_dtypes=("fp32", "fp16"),
        parity_filter="",
        worker_dtype="fp16",
        worker_steps=None,
        bench_size="sd15",
        bench_dtype="fp16",
        bench_steps=(50, 20),
        bench_repeats=3,
        compile_variants=("ours-compile", "stock-cudagraphs", "ours-cudagraphs"),
    ),
    # The dry run on a CPU: the same steps, tiny, in about a minute (tests/benchmarks/test_gpu_check.py); two of the
    # parity tests; no compile (the variants run on a CPU too, a minute or more each: benchmarks.bench_gpu --variant).
    "cpu": Profile(
        budget=600,
        parity_dtypes=("fp32", "fp16"),
        parity_filter="ddim or guidance_rescale",
        worker_dtype="fp32",
        worker_steps=4,
        bench_size="tiny",
        bench_dtype="fp32",
        bench_steps=(3, 2),
        bench_repeats=1,
    ),
}


@dataclass(frozen=True)
class Step:
    name: str
    limit: float  # seconds this step may take at most
    expected: float  # seconds it usually takes; kept free for it while earlier steps run
    required: bool = True  # False: started only if `expected` seconds are left, then given what is left
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    status: str  # ok, failed, timed_out, skipped
    seconds: float = 0.0
    reason: str = ""
    figures: dict = field(default_factory=dict)


# ---- the steps' own processes ------------------------------------------------------------------


def environment_figures() -> dict:
    """Versions and the device; runs in its own process, where torch is imported."""
    import platform

    import celery
    import diffusers
    import django
    import torch
    import transformers

    figures = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "django": django.get_version(),
        "celery": celery.__version__,
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        figures.update(
            gpu=properties.name,
            gpu_memory_gib=properties.total_memory / 2**30,
            gpu_multiprocessors=properties.multi_processor_count,
            gpu_capability=f"{properties.major}.{properties.minor}",
            flash_sdp_enabled=torch.backends.cuda.flash_sdp_enabled(),
        )
    return figures


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gpu_processes() -> dict[int, float] | None:
    """pid → MiB of every process nvidia-smi sees on a GPU; None where nvidia-smi is missing or says nothing."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    processes = {}
    for line in listed.splitlines():
        pid, _, memory = line.partition(",")
        if pid.strip().isdigit():
            processes[int(pid)] = float(memory) if memory.strip().replace(".", "").isdigit() else 0.0
    return processes or None


def worker_figures(figures: dict, device: str, dtype: str, steps: int | None, png: Path | None, logs: Path) -> None:
    """A real API process and worker on embedded defaults, two jobs over HTTP, into `figures`; raises on a fault.

    Their output goes to `logs`/api.log and `logs`/worker.log as they run, so a step stopped part-way keeps it.
    """
    import numpy as np
    import requests
    from PIL import Image

    # Embedded defaults: the local settings, SQLite and the file broker in a fresh VAR_DIR, the built-in model.
    for name in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "MODELS", "MEDIA_ROOT"):
        os.environ.pop(name, None)
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        os.environ.pop(name)
    var_dir = Path(tempfile.mkdtemp(prefix="gpu-check-var-"))
    os.environ.update(VAR_DIR=str(var_dir), GENERATOR_DEVICE=device, GENERATOR_DTYPE=dtype)

    from diffusion_api.processes import start_api, start_worker, wait_healthy
    from generator.evaluation.attributes import check
    from generator.pngmeta import read_manifest

    figures.update(device=device, dtype=dtype)
    started = time.perf_counter()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True, timeout=120)
    figures["migrate_seconds"] = time.perf_counter() - started
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    api = start_api(port, log=logs / "api.log")
    worker = start_worker(log=logs / "worker.log")
    try:
        while True:  # until the database, the broker and the worker answer; a worker that exits ends the wait
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with status {worker.returncode}; see worker.log")
            try:
                wait_healthy(base, timeout=5)
                break
            except TimeoutError:
                if time.perf_counter() - started > 150:
                    raise
        figures["service_ready_seconds"] = time.perf_counter() - started
        token = subprocess.run(
            [sys.executable, "manage.py", "issue_token", "gpu-check"],
            cwd=ROOT, check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()
        headers = {"Authorization": f"Token {token}"}
        # The first job waits for the model's load; the second runs warm (another seed: no cached answer).
        for label, seed in (("first", 42), ("second", 43)):
            body = {"prompt": PROMPT, "seed": seed} | ({"steps": steps} if steps else {})
            posted = time.perf_counter()
            response = requests.post(f"{base}/api/v1/jobs/", json=body, headers=headers, timeout=30)
            response.raise_for_status()
            job = response.json()
            while job["status"] in ("queued", "running"):
                if time.perf_counter() - posted > 120:
                    raise TimeoutError(f"job {job['id']} still {job['status']} after 120 s")
                time.sleep(0.05)
                job = requests.get(job["url"], headers=headers, timeout=30).json()
            if job["status"] != "succeeded":
                raise RuntimeError(f"the {label} job ended {job['status']}: {job.get('error')}")
            figures[f"{label}_job_seconds"] = time.perf_counter() - posted
            figures[f"{label}_job_run_seconds"] = job["timings"]["run_seconds"]
        figures["job_steps"] = job["parameters"]["steps"]
        (image,) = job["images"]
        data = base64.b64decode(image["png_base64"])
        if png is not None:
            png.write_bytes(data)
        picture = Image.open(io.BytesIO(data)).convert("RGB")
        figures["width"], figures["height"] = picture.size
        figures["pixel_std"] = float(np.asarray(picture, dtype=np.float32).std())
        # The worker's own record of where it ran: the PNG manifest's device, dtype and engine.
        manifest = read_manifest(data)
        ran_on = {key: manifest.get(key) for key in ("device_type", "dtype", "engine", "seed", "versions")}
        figures["manifest"] = ran_on
        wanted = (device.split(":")[0], TORCH_DTYPES[dtype])
        if (ran_on["device_type"], ran_on["dtype"]) != wanted:
            raise RuntimeError(f"the job ran on {ran_on['device_type']} in {ran_on['dtype']}, not on {wanted}")
        verdict = check(picture, PROMPT)  # with 4 steps (the dry run) the picture need not be right
        figures["prompt_attributes_correct"] = int(verdict.correct)
        figures["prompt_attribute_checks"] = verdict.checks
        if device.startswith("cuda"):
            # The worker is a process session of its own (start_new_session); its pool child runs the jobs.
            processes = gpu_processes()
            figures["gpu_processes_listed"] = int(processes is not None)
            if processes is not None:
                ours = {pid: mib for pid, mib in processes.items() if _session(pid) == worker.pid}
                if not ours:
                    raise RuntimeError(f"nvidia-smi lists GPU processes {sorted(processes)}, none of them the worker's")
                figures["worker_gpu_memory_mib"] = sum(ours.values())
        if picture.size != (64, 64) or figures["pixel_std"] < 1:
            raise RuntimeError(f"unexpected image: {picture.size}, pixel standard deviation {figures['pixel_std']:.2f}")
    finally:
        stop_service(api, worker)  # their own process sessions: a kill of this step's process group misses them
        shutil.rmtree(var_dir, ignore_errors=True)


def stop_service(api: subprocess.Popen, worker: subprocess.Popen) -> None:
    """SIGTERM to the API's process group and to the worker's main process alone, then SIGKILL what is left.

    A SIGTERM to the worker's whole group also reaches its pool child, and Celery's main process starts a new one
    during its warm shutdown (which then loads the model again); to the main process alone, the shutdown ends
    the child itself.
    """
    if api.poll() is None:
        os.killpg(api.pid, signal.SIGTERM)
    if worker.poll() is None:
        os.kill(worker.pid, signal.SIGTERM)
    for process in (worker, api):
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of its group is still there
        process.wait()


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


# ---- the run -------------------------------------------------------------------------------


def plan(device: str, profile: Profile, work: Path, out: Path) -> list[Step]:
    python = [sys.executable]
    this = [*python, str(Path(__file__).relative_to(ROOT))]
    steps = [Step("environment", limit=60, expected=15,
                  command=[*this, "environment", "--json", str(work / "environment.json")])]
    for dtype in profile.parity_dtypes:
        steps.append(Step(
            f"parity_{dtype}", limit=150, expected=45,
            command=[*python, "-m", "pytest", "-q", "-p", "no:django", "-o", "junit_family=xunit1",
                     f"--junitxml={work / f'parity_{dtype}.xml'}", "tests/generator/test_parity.py",
                     *(["-k", profile.parity_filter] if profile.parity_filter else [])],
            env={"GENERATOR_TEST_DEVICE": device, "GENERATOR_TEST_DTYPE": dtype},
        ))
    worker = [*this, "worker", "--json", str(work / "worker.json"), "--device", device, "--dtype", profile.worker_dtype,
              "--png", str(out / "worker.png"), "--logs", str(out)]
    if profile.worker_steps:
        worker += ["--steps", str(profile.worker_steps)]
    steps.append(Step("worker", limit=240, expected=60, command=worker))
    bench = [*python, "-m", "benchmarks.bench_gpu", "--device", device, "--dtype", profile.bench_dtype,
             "--size", profile.bench_size, "--steps", *map(str, profile.bench_steps),
             "--repeats", str(profile.bench_repeats)]
    steps.append(Step("bench_eager", limit=300, expected=120,
                      command=[*bench, "--variant", "eager", "--json", str(work / "bench_eager.json")]))
    for variant in profile.compile_variants:
        steps.append(Step(f"bench_{variant}", limit=300, expected=100, required=False,
                          command=[*bench, "--variant", variant, "--json", str(work / f"bench_{variant}.json")]))
    return steps


def run_step(step: Step, timeout: float, log: Path) -> tuple[str, float, str]:
    """Run the step's command with its output appended to the log; (status, seconds, reason)."""
    with log.open("a") as out:
        out.write(f"\n==== {step.name}: {' '.join(step.command)} (limit {timeout:.0f} s)\n")
        out.flush()
        started = time.perf_counter()
        process = subprocess.Popen(step.command, cwd=ROOT, env={**os.environ, **step.env}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The step's whole process group; SIGTERM first, so the worker step stops the API and worker it started.
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return "timed_out", time.perf_counter() - started, f"stopped after {timeout:.0f} s"
        seconds = time.perf_counter() - started
    if code:
        return "failed", seconds, f"exit status {code}; see gpu_check.log"
    return "ok", seconds, ""


def read_figures(step: Step, work: Path) -> dict:
    """The figures a step left in the work folder (also after a failure or a kill: what it wrote so far)."""
    if step.name.startswith("parity_"):
        return parity_figures(work / f"{step.name}.xml")
    path = work / f"{step.name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def parity_figures(junit: Path) -> dict:
    if not junit.is_file():
        return {}
    suite = ElementTree.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    differences = {}
    for case in suite.iter("testcase"):
        for prop in case.iter("property"):
            if prop.get("name") == "max_difference_levels":
                differences[case.get("name")] = int(prop.get("value"))
    return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "max_difference_levels": differences}


def nvidia_smi(out: Path) -> dict:
    """nvidia-smi's full report into out/nvidia-smi.txt; the GPU's name, driver and memory as figures."""
    try:
        full = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as error:
        (out / "nvidia-smi.txt").write_text(f"nvidia-smi did not run: {error}\n")
        return {"nvidia_smi": f"did not run: {error}"}
    (out / "nvidia-smi.txt").write_text(full.stdout + full.stderr)
    name, driver, memory = ([part.strip() for part in query.stdout.splitlines()[0].split(",")] + ["", "", ""])[:3] \
        if query.returncode == 0 and query.stdout.strip() else ("", "", "")
    return {"nvidia_smi_gpu": name, "driver": driver, "nvidia_smi_memory_mib": float(memory) if memory else None}


def summarise(outcomes: dict[str, Outcome]) -> dict[str, float]:
    """The run's figures as one flat name → number table (seconds, levels, ratios, counts)."""
    summary: dict[str, float] = {}
    for name, outcome in outcomes.items():
        summary[f"{name}_seconds"] = outcome.seconds
        summary[f"{name}_ok"] = int(outcome.status == "ok")
    for name, outcome in outcomes.items():
        figures = outcome.figures
        if name.startswith("parity_") and figures:
            summary[f"{name}_passed"] = figures["passed"]
            summary[f"{name}_failed"] = figures["failures"] + figures["errors"]
            differences = figures["max_difference_levels"].values()
            if differences:
                summary[f"{name}_max_difference_levels"] = max(differences)
        if name == "worker":
            for key in ("service_ready_seconds", "first_job_seconds", "second_job_seconds", "second_job_run_seconds",
                        "prompt_attributes_correct", "worker_gpu_memory_mib"):
                if isinstance(figures.get(key), int | float):
                    summary[f"worker_{key}"] = figures[key]
    stock = outcomes.get("bench_eager", Outcome("skipped")).figures.get("paths", {}).get("stock", {})
    for name, outcome in outcomes.items():
        if not name.startswith("bench_"):
            continue
        for label, path in outcome.figures.get("paths", {}).items():
            for steps, entry in path["steps"].items():
                seconds = entry["median_image_seconds"]
                summary[f"{label}_{steps}_steps_seconds"] = seconds
                reference = stock.get("steps", {}).get(steps)
                if reference and label != "stock":
                    summary[f"{label}_{steps}_steps_speedup_vs_stock"] = reference["median_image_seconds"] / seconds
            if path.get("step_seconds") is not None:
                summary[f"{label}_step_ms"] = path["step_seconds"] * 1000
            if path.get("compile_seconds") is not None:
                summary[f"{label}_compile_seconds"] = path["compile_seconds"]
        if outcome.figures.get("peak_memory_gib") is not None:
            summary[f"{name}_peak_memory_gib"] = outcome.figures["peak_memory_gib"]
    return summary


def run_all(out: Path, device: str, budget: float | None) -> int:
    profile = PROFILES["cuda" if device.startswith("cuda") else "cpu"]
    budget = profile.budget if budget is None else budget
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    report: dict = {
        "command": "bash scripts/gpu_check.sh",
        "device": device,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "budget_seconds": budget,
        "profile": vars(profile),
        "host": socket.gethostname(),
        "steps": {},
    }
    outcomes: dict[str, Outcome] = {}
    started = time.perf_counter()
    deadline = started + budget

    def write() -> None:
        report["steps"] = {name: vars(outcome) for name, outcome in outcomes.items()}
        report["failed_steps"] = [name for name, o in outcomes.items() if o.status not in ("ok", "skipped")]
        report["summary"] = summarise(outcomes)
        report["wall_seconds"] = time.perf_counter() - started
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        steps = plan(device, profile, work, out)
        for index, step in enumerate(steps):
            left = deadline - time.perf_counter()
            later = sum(s.expected for s in steps[index + 1:] if s.required)
            if step.required:
                timeout = min(step.limit, max(left - later, step.expected / 2))
            else:
                timeout = min(step.limit, left)
                if left < step.expected:
                    outcomes[step.name] = Outcome("skipped", reason=f"{left:.0f} s of the budget left, "
                                                                    f"{step.expected:.0f} s needed")
                    print(f"{step.name}: skipped ({outcomes[step.name].reason})", flush=True)
                    write()
                    continue
            status, seconds, reason = run_step(step, timeout, log)
            outcome = Outcome(status, seconds, reason, read_figures(step, work))
            if step.name == "environment":
                outcome.figures.update(nvidia_smi(out))
                if device.startswith("cuda") and not outcome.figures.get("cuda_available"):
                    outcome.status, outcome.reason = "failed", "torch sees no CUDA device"
            outcomes[step.name] = outcome
            print(f"{step.name}: {status} in {seconds:.1f} s" + (f" ({reason})" if reason else ""), flush=True)
            write()
    write()
    print(json.dumps(report["summary"], indent=1))
    print(f"figures: {out / 'gpu_check.json'}; log: {log}; failed steps: {report['failed_steps'] or 'none'}")
    return 1 if report["failed_steps"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu-check")
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (the dry run)")
    parser.add_argument("--budget", type=float, help="seconds for all steps (default: 440 on cuda, 600 on cpu)")
    environment = sub.add_parser("environment")
    environment.add_argument("--json", type=Path, required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--json", type=Path, required=True)
    worker.add_argument("--device", default="cuda")
    worker.add_argument("--dtype", default="fp16")
    worker.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    worker.add_argument("--png", type=Path)
    worker.add_argument("--logs", type=Path, required=True, help="a folder for api.log and worker.log")
    args = parser.parse_args(argv)
    if args.step == "environment":
        args.json.write_text(json.dumps(environment_figures(), indent=2) + "\n")
        return 0
    if args.step == "worker":
        figures: dict = {}
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped step still runs its `finally`
        try:
            worker_figures(figures, args.device, args.dtype, args.steps, args.png, args.logs)
        finally:  # what it measured before a fault, too
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return 0
    return run_all(args.out, args.device, args.budget)


if __name__ == "__main__":
    sys.exit(main())
