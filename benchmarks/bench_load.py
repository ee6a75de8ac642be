"""A load test: locust users (benchmarks/locustfile.py) against the API under gunicorn's uvicorn workers, two
Celery workers (one process each: one per core here), PostgreSQL and Redis, the tiny model; a sweep over the
number of users.

For each user count, on a fresh service: jobs finished per minute, the error rate, p50 and p99 of each route, the
CPU seconds per second of the API processes, the workers and locust (what saturates first), and how long jobs
waited in the queue (created → started, from the database).

Usage
    python -m benchmarks.bench_load --users 8,32,128 --seconds 60 --json var/bench-results/load.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks.bench_service import BASE, ROOT, Service, percentile, tree_cpu_seconds


def run(model_dir: Path, users: int, seconds: int, steps: int) -> dict:
    # The deployed limits (a user may have 10 unfinished jobs, create 60 a minute) and progress writes; one torch
    # thread a worker, so that the two workers take one core each instead of fighting over both.
    env = {"JOB_MAX_ACTIVE_PER_USER": "10", "JOB_CREATE_RATE": "60/min", "JOB_PROGRESS_INTERVAL": "0.25"}
    env["OMP_NUM_THREADS"] = "1"
    with Service(model_dir, env, workers=2) as service:
        tokens = _issue_tokens(service, users)
        out = Path(tempfile.mkdtemp(prefix="bench-load-")) / "locust"
        locust = Path(sys.executable).with_name("locust")
        command = [str(locust), "-f", str(ROOT / "benchmarks" / "locustfile.py"), "--headless", "--host", BASE]
        command += ["-u", str(users), "-r", str(max(1, users // 4)), "-t", f"{seconds}s", "--csv", str(out)]
        command += ["--only-summary", "--stop-timeout", "30", "--loglevel", "WARNING"]
        cpu = {name: tree_cpu_seconds(p.pid) for name, p in _processes(service).items()}
        started = time.time()
        process = subprocess.Popen(
            command, env={**os.environ, "LOAD_TOKENS": ",".join(tokens), "LOAD_STEPS": str(steps)}, cwd=ROOT
        )
        locust_cpu = _wait_measuring(process)
        elapsed = time.time() - started
        processes = _processes(service).items()
        busy = {name: round((tree_cpu_seconds(p.pid) - cpu[name]) / elapsed, 2) for name, p in processes}
        busy["locust"] = round(locust_cpu / elapsed, 2)
        waits = _queue_waits(service, started)
    routes = _read_stats(out.with_name(out.name + "_stats.csv"))
    finished = routes.get("job succeeded", {}).get("requests", 0)
    requests_total = sum(r["requests"] for name, r in routes.items() if not name.startswith("job "))
    failures = sum(r["failures"] for name, r in routes.items() if not name.startswith("job "))
    return {
        "users": users,
        "seconds": seconds,
        "steps": steps,
        "jobs_per_min": round(60 * finished / seconds, 1),
        "error_rate": round(failures / requests_total, 4) if requests_total else None,
        "routes": routes,
        "cpu_per_second": busy,
        "queue_wait_p50_s": waits[0],
        "queue_wait_p99_s": waits[1],
    }


def _issue_tokens(service: Service, count: int) -> list[str]:
    script = (
        "from django.contrib.auth import get_user_model\n"
        "from diffusion_api.accounts.services import token_issue\n"
        f"for i in range({count}):\n"
        "    user, _ = get_user_model().objects.get_or_create(username=f'load{i}')\n"
        "    print('token', token_issue(user=user))\n"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env={**os.environ, **service.env},
        check=True,
        capture_output=True,
        text=True,
    )
    return [line.split()[1] for line in result.stdout.splitlines() if line.startswith("token ")]


def _processes(service: Service) -> dict:
    return {"api": service.api, **{f"worker{i}": worker for i, worker in enumerate(service.workers)}}


def _wait_measuring(process: subprocess.Popen) -> float:
    """Wait for locust; its CPU seconds (read while it runs: once it is reaped, /proc forgets it)."""
    spent = 0.0
    while process.poll() is None:
        try:
            spent = tree_cpu_seconds(process.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(1)
    return spent


def _queue_waits(service: Service, since: float) -> tuple[float | None, float | None]:
    with psycopg.connect(service.env["DATABASE_URL"]) as db:
        rows = db.execute(
            "SELECT extract(epoch FROM started_at - created_at) FROM jobs_job "
            "WHERE started_at IS NOT NULL AND created_at >= to_timestamp(%s)",
            (since,),
        ).fetchall()
    waits = [float(row[0]) for row in rows]
    if not waits:
        return None, None
    return round(percentile(waits, 50), 3), round(percentile(waits, 99), 3)


def _read_stats(path: Path) -> dict:
    routes = {}
    with path.open() as file:
        for row in csv.DictReader(file):
            if row["Name"] == "Aggregated":
                continue
            routes[f"{row['Type']} {row['Name']}" if row["Type"] != "JOB" else row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "p50_ms": float(row["50%"] or 0),
                "p99_ms": float(row["99%"] or 0),
                "per_second": round(float(row["Requests/s"]), 2),
            }
    return routes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="8,32,128", help="user counts to sweep, comma-separated")
    parser.add_argument("--seconds", type=int, default=60, help="length of each run")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of each job")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from generator import TinyModelConfig, make_tiny_model

    tiny = make_tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny", TinyModelConfig(sample_size=32))
    rows = []
    for users in (int(n) for n in args.users.split(",")):
        rows.append(row := run(tiny, users, args.seconds, args.steps))
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    print(
        "\n| users | jobs/min | errors | POST p50/p99 ms | GET job p50/p99 ms | queue wait p50 s "
        "| CPU s/s: API, workers, locust |\n|---|---|---|---|---|---|---|"
    )
    for row in rows:
        post = row["routes"].get("POST /api/v1/jobs/", {})
        get = row["routes"].get("GET /api/v1/jobs/{id}/", {})
        cpu = row["cpu_per_second"]
        workers = round(sum(v for k, v in cpu.items() if k.startswith("worker")), 2)
        print(
            f"| {row['users']} | {row['jobs_per_min']} | {100 * (row['error_rate'] or 0):.2f}% "
            f"| {post.get('p50_ms')}/{post.get('p99_ms')} | {get.get('p50_ms')}/{get.get('p99_ms')} "
            f"| {row['queue_wait_p50_s']} | {cpu['api']}, {workers}, {cpu['locust']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
