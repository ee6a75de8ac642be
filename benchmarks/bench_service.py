"""Service overhead and throughput, measured through the real HTTP API, worker, PostgreSQL and Redis.

What is measured (each part is a flag; `--all` runs every one):

* `--latency`: POST → the worker's first denoising step, on an idle service. One client submits a
  job, then polls it every 5 ms until `progress.step >= 1`; p50 and p99 over `--latency-jobs` jobs.
  The figure includes the broker hop, the claim, prompt encoding and one UNet step of the tiny model.
* `--polling`: GET jobs/{id}/ under load from `wrk` (Debian package) with 100 and 200 connections
  for 10 s each; wrk's p50 and p99 and requests per second.
* `--throughput`: jobs per minute with 1, 4 and 16 concurrent clients, each submitting a job and
  polling it every `--poll-interval` seconds to the end, over and over for `--seconds`; once with
  WORKER_BATCH_SIZE=1 (no batching) and once with WORKER_BATCH_SIZE=4, each on a fresh service.
* `--memory`: resident memory (VmRSS) of the worker's pool process after one job, with the tiny
  default model and with SD 1.5-size weights (the folder `python -m benchmarks.bench_engine` builds).

Each run makes a fresh PostgreSQL database and uses Redis db 12; both are the machine's servers
(DATABASE_URL, REDIS_URL, defaults 127.0.0.1). Results go to stdout as markdown and to `--json`.

Usage
    python -m benchmarks.bench_service --all --json var/bench-results/service.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
import redis
import requests

ROOT = Path(__file__).resolve().parents[1]
from diffusion_api.processes import start_api, start_worker, stop, wait_healthy  # noqa: E402

ADMIN_DB = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
PORT = 8123
BASE = f"http://127.0.0.1:{PORT}"
SD15_DIR = ROOT / "var" / "bench-models"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Service:
    """A fresh database, the API under gunicorn and one worker, with the given extra environment."""

    def __init__(self, model_dir: Path, extra_env: dict | None = None, server: str = "asgi"):
        self.server = server
        self.db_name = f"bench_{uuid.uuid4().hex[:8]}"
        self.var = Path(tempfile.mkdtemp(prefix="bench-var-"))
        self.env = {
            "DJANGO_SETTINGS_MODULE": "diffusion_api.settings.production",
            "SECRET_KEY": uuid.uuid4().hex * 2,
            "SECURE_SSL_REDIRECT": "false",
            "DATABASE_URL": urlunparse(urlparse(ADMIN_DB)._replace(path=f"/{self.db_name}")),
            "REDIS_URL": REDIS,
            "MODELS": f"bench={model_dir}",
            "GENERATOR_DEVICE": "cpu",
            "JOB_MAX_ACTIVE_PER_USER": "1000",
            "JOB_CREATE_RATE": "100000/min",
            "JOB_PROGRESS_INTERVAL": "0",
            "LOG_LEVEL": "WARNING",
            "VAR_DIR": str(self.var),
            "HF_HUB_OFFLINE": "1",
            **(extra_env or {}),
        }

    def __enter__(self) -> Service:
        with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        redis.Redis.from_url(REDIS).flushdb()
        env = {**os.environ, **self.env}
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        self.api = start_api(PORT, env=self.env, log=self.var / "api.log", gunicorn=True, server=self.server)
        self.worker = start_worker(env=self.env, log=self.var / "worker.log")
        wait_healthy(BASE, timeout=300)
        token = subprocess.run(
            [sys.executable, "manage.py", "issue_token", "bench"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.headers = {"Authorization": f"Token {token}"}
        return self

    def __exit__(self, *exc) -> None:
        stop(self.api, self.worker)
        with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        shutil.rmtree(self.var, ignore_errors=True)

    def submit(self, session: requests.Session, **fields) -> dict:
        response = session.post(
            f"{BASE}/api/v1/jobs/", json={"prompt": "a red circle", **fields}, headers=self.headers, timeout=30
        )
        response.raise_for_status()
        return response.json()

    def wait(self, session: requests.Session, job: dict, until, interval: float = 0.02) -> dict:
        while not until(job):
            time.sleep(interval)
            job = session.get(job["url"], headers=self.headers, timeout=30).json()
        return job

    def pool_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.worker.pid)], capture_output=True, text=True)
        children = [int(p) for p in out.stdout.split()]
        grand = []
        for child in children:
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(child)], capture_output=True, text=True)
            grand += [int(p) for p in out.stdout.split()]
        return grand or children


def finished(job: dict) -> bool:
    return job["status"] not in ("queued", "running")


def measure_latency(model_dir: Path, jobs: int) -> dict:
    with Service(model_dir) as service:
        session = requests.Session()
        service.wait(session, service.submit(session, steps=2), finished)  # warm: the model loads here
        latencies = []
        for _ in range(jobs):
            started = time.perf_counter()
            job = service.submit(session, steps=2)
            service.wait(session, job, lambda j: j["progress"]["step"] >= 1 or finished(j), interval=0.005)
            latencies.append(time.perf_counter() - started)
            service.wait(session, job, finished)
    return {"jobs": jobs, "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99)}


def measure_polling(model_dir: Path, servers: tuple[str, ...] = ("wsgi", "asgi")) -> list[dict]:
    """wrk on one job's status route, for each server kind in turn (same run, same machine: comparable)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    results = []
    for server in servers:
        with Service(model_dir, server=server) as service:
            session = requests.Session()
            job = service.wait(session, service.submit(session, steps=2), finished)
            for connections in (100, 200):
                results.append({"server": server, "connections": connections, **run_wrk(service, job, connections)})
                print(f"  {results[-1]}", flush=True)
    return results


def run_wrk(service: Service, job: dict, connections: int, seconds: int = 10) -> dict:
    command = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-H",
        f"Authorization: {service.headers['Authorization']}",
        job["url"],
    ]
    return parse_wrk(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def parse_wrk(out: str) -> dict:
    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    p50 = re.search(r"50%\s+(\S+)", out).group(1)
    p99 = re.search(r"99%\s+(\S+)", out).group(1)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "p50_ms": ms(p50),
        "p99_ms": ms(p99),
        "requests_per_s": rps,
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def measure_throughput(model_dir: Path, seconds: float, steps: int, poll: float) -> list[dict]:
    results = []
    for batch in (1, 4):
        with Service(model_dir, {"WORKER_BATCH_SIZE": str(batch)}) as service:
            warm = requests.Session()
            service.wait(warm, service.submit(warm, steps=steps), finished)
            for clients in (1, 4, 16):
                done: list[float] = []
                deadline = time.monotonic() + seconds
                threads = [
                    threading.Thread(target=run_client, args=(service, steps, deadline, done, poll))
                    for _ in range(clients)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                results.append(
                    {
                        "batch_size": batch,
                        "clients": clients,
                        "jobs": len(done),
                        "jobs_per_min": 60 * len(done) / seconds,
                    }
                )
                print(f"  batch {batch}, {clients:2d} clients: {60 * len(done) / seconds:.1f} jobs/min", flush=True)
    return results


def run_client(service: Service, steps: int, deadline: float, done: list[float], poll: float) -> None:
    """Submit a job, poll it to the end, repeat until the deadline; record each success in `done`."""
    session = requests.Session()
    while time.monotonic() < deadline:
        job = service.submit(session, steps=steps, cache=False)
        job = service.wait(session, job, finished, interval=poll)
        if time.monotonic() <= deadline and job["status"] == "succeeded":
            done.append(time.monotonic())


def measure_memory(model_dir: Path, label: str, size: int) -> dict:
    with Service(model_dir) as service:
        session = requests.Session()
        job = service.wait(session, service.submit(session, steps=1, width=size, height=size), finished)
        assert job["status"] == "succeeded", job
        rss = {}
        for pid in service.pool_pids():
            status = Path(f"/proc/{pid}/status").read_text()
            rss[pid] = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024
    return {"model": label, "rss_mb": max(rss.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--polling", action="store_true")
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--latency-jobs", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60, help="length of each throughput measurement")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps of each throughput job")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between a client's polls")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from generator import TinyModelConfig, make_tiny_model

    tiny = make_tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny", TinyModelConfig(sample_size=32))
    results: dict = {"machine": {"cpus": os.cpu_count(), "load_start": os.getloadavg()}}
    if args.all or args.latency:
        results["latency"] = measure_latency(tiny, args.latency_jobs)
        print(
            f"POST → first step, idle: p50 {results['latency']['p50_ms']:.0f} ms, "
            f"p99 {results['latency']['p99_ms']:.0f} ms ({args.latency_jobs} jobs)",
            flush=True,
        )
    if args.all or args.polling:
        results["polling"] = measure_polling(tiny)
        for row in results["polling"]:
            print(
                f"GET job ({row['server']}), {row['connections']} connections: p50 {row['p50_ms']:.1f} ms, "
                f"p99 {row['p99_ms']:.1f} ms,"
                f" {row['requests_per_s']:.0f} req/s, non-2xx {row['non_2xx']}",
                flush=True,
            )
    if args.all or args.throughput:
        results["throughput"] = measure_throughput(tiny, args.seconds, args.steps, args.poll_interval)
    if args.all or args.memory:
        rows = [measure_memory(tiny, "tiny (32×32)", 32)]
        sd15 = sorted(SD15_DIR.glob("sd15-random-*"))
        if sd15:
            rows.append(measure_memory(sd15[-1], "SD 1.5 size, fp32", 64))
        else:
            print("no SD 1.5-size folder: run python -m benchmarks.bench_engine --size sd15 once first")
        results["memory"] = rows
        for row in rows:
            print(f"worker RSS with {row['model']}: {row['rss_mb']:.0f} MB", flush=True)
    results["machine"]["load_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    if "throughput" in results:
        print("\n| batch size | clients | jobs/min |\n|---|---|---|")
        for row in results["throughput"]:
            print(f"| {row['batch_size']} | {row['clients']} | {row['jobs_per_min']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
