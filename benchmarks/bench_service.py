"""Service overhead and throughput, measured through the real HTTP API, worker, PostgreSQL and Redis.

What is measured (each part is a flag; `--all` runs every one):

* `--latency`: POST → the worker's first denoising step (its progress event's `at`), on an idle service, and the
  parts of that time (the request, on to the claim, the prompt's encoding, the step); p50 and p99 over
  `--latency-jobs` jobs of 2 steps.
* `--polling`: GET jobs/{id}/ under load from `wrk` (Debian package) with 100 and 200 connections
  for 10 s each; wrk's p50 and p99 and requests per second. Once under gunicorn's sync workers (WSGI) and once
  under its uvicorn workers (ASGI, as deployed), alternating `--repeat` times; the medians.
* `--streams N`: N Server-Sent Event streams (raw sockets, this process) following `--stream-jobs` jobs of
  `--stream-steps` steps at 64 × 64 as they run one after another; how long after the worker's step each progress
  event arrives (p50, p99; the worker stamps `at`), and the status route under `wrk` with 10 connections with and
  without the streams open.
* `--profile`: where a status read's time goes: `py-spy` samples the API's processes (`--profile-server`, asgi or
  asgi-direct) while `wrk` polls one job with 100 connections; each function's share of the samples it appears in
  (inclusive), the top ones.
* `--open-loop N`: N clients, each polling one job's status once a second on a fixed schedule (an open-loop load:
  a late answer does not delay the next request, and each latency counts from when the request was due), over 20
  jobs (10 finished, 10 queued or running); p50, p99 and the worst latency.
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
import asyncio
import json
import os
import re
import resource
import shutil
import socket
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
STREAM_DEADLINE = float(os.environ.get("BENCH_STREAM_DEADLINE", 300))  # s for all streams to end, once connected
CONNECTIONS = tuple(int(n) for n in os.environ.get("BENCH_CONNECTIONS", "100,200").split(","))
BASE = f"http://127.0.0.1:{PORT}"
SD15_DIR = ROOT / "var" / "bench-models"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Service:
    """A fresh database, the API under gunicorn and `workers` workers (one process each), with the given extra
    environment."""

    def __init__(self, model_dir: Path, extra_env: dict | None = None, server: str = "asgi", workers: int = 1):
        self.worker_count = workers
        # "asgi-direct": ASGI with every status read through Django (no kept answers, jobs.status_reads)
        self.server = server.removesuffix("-direct")
        extra_env = {**(extra_env or {}), **({"STATUS_READ_CACHE_MB": "0"} if server.endswith("-direct") else {})}
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
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", PORT)) == 0:
                raise SystemExit(f"port {PORT} is taken, perhaps by a service a killed run left: stop it first")
        with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        redis.Redis.from_url(REDIS).flushdb()
        env = {**os.environ, **self.env}
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        self.api = start_api(PORT, env=self.env, log=self.var / "api.log", gunicorn=True, server=self.server)
        self.workers = [
            start_worker(env=self.env, log=self.var / f"worker{i}.log", name=f"worker{i}")
            for i in range(self.worker_count)
        ]
        self.worker = self.workers[0]
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
        stop(self.api, *self.workers)
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
    """POST → the worker's first step, and its parts, from one clock (this machine's): the client's send and answer,
    the job row's `created_at` (the request parsed, authenticated and checked) and `started_at` (the claim: between
    them the insert, the commit, the broker and the claim query), and the worker's progress events for steps 1 and 2
    (Redis, their `at`). Jobs of 2 steps: the second step's event is never held back, so step 2 − step 1 is one step
    (with its progress write), and the encode is what remains between the claim and step 1. The client listens on
    Redis instead of polling, so that nothing but the job itself uses the CPU."""
    with Service(model_dir) as service:
        session = requests.Session()
        for _ in range(4):  # warm: the model loads, and each API process opens its connections
            service.wait(session, service.submit(session, steps=2), finished, interval=0.05)
        steps_at: dict[tuple[str, int], float] = {}
        arrived = threading.Condition()
        listener = redis.Redis.from_url(REDIS).pubsub()
        listener.psubscribe("job-events:*")
        listener.get_message(timeout=1)  # the subscription's confirmation

        def listen() -> None:
            for message in listener.listen():
                if message["type"] == "pmessage":
                    event = json.loads(message["data"])
                    if event.get("type") == "progress":
                        with arrived:
                            steps_at[message["channel"].decode().split(":", 1)[1], event["step"]] = event["at"]
                            arrived.notify_all()

        threading.Thread(target=listen, daemon=True).start()
        rows = []
        for _ in range(jobs):
            sent = time.time()
            job = service.submit(session, steps=2)
            answered = time.time()
            second_step = (job["id"], 2)
            with arrived:
                if not arrived.wait_for(lambda: second_step in steps_at, timeout=60):  # noqa: B023 (waited here)
                    raise SystemExit(f"job {job['id']}: no progress events for steps 1 and 2 on Redis")
            service.wait(session, job, finished, interval=0.05)
            rows.append({"id": job["id"], "sent": sent, "answered": answered})
        listener.punsubscribe()
        with psycopg.connect(service.env["DATABASE_URL"]) as db:
            for row in rows:
                created, started = db.execute(
                    "SELECT created_at, started_at FROM jobs_job WHERE id = %s", (row["id"],)
                ).fetchone()
                step1, step2 = steps_at[row["id"], 1], steps_at[row["id"], 2]
                row.update(
                    first_step=step1 - row["sent"],
                    answer=row["answered"] - row["sent"],
                    request=created.timestamp() - row["sent"],
                    to_claim=started.timestamp() - created.timestamp(),
                    encode=(step1 - started.timestamp()) - (step2 - step1),
                    step=step2 - step1,
                )
    return {
        "jobs": jobs,
        **{f"{part}_p50_ms": round(1000 * percentile([r[part] for r in rows], 50), 1) for part in LATENCY_PARTS},
        **{f"{part}_p99_ms": round(1000 * percentile([r[part] for r in rows], 99), 1) for part in LATENCY_PARTS},
    }


LATENCY_PARTS = ("first_step", "answer", "request", "to_claim", "encode", "step")


def measure_polling(model_dir: Path, repeat: int = 3, servers: tuple[str, ...] = ("wsgi", "asgi")) -> list[dict]:
    """wrk on one job's status route under each server kind, alternating kinds `repeat` times (same run, same
    machine: comparable); the medians of the runs."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(repeat):
        for server in servers:
            with Service(model_dir, server=server) as service:
                session = requests.Session()
                job = service.wait(session, service.submit(session, steps=2), finished)
                for connections in CONNECTIONS:
                    runs.setdefault((server, connections), []).append(run_wrk(service, job, connections))
                    print(f"  {server} {connections}: {runs[server, connections][-1]}", flush=True)
    return [
        {
            "server": server,
            "connections": connections,
            "runs": len(rows),
            **{key: percentile([row[key] for row in rows], 50) for key in rows[0]},
        }
        for (server, connections), rows in runs.items()
    ]


def run_wrk(service: Service, job: dict, connections: int, seconds: int = 10) -> dict:
    command = [
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-H",
        f"Authorization: {service.headers['Authorization']}",
        job["url"],
    ]
    cpu_before = tree_cpu_seconds(service.api.pid)
    result = parse_wrk(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    served = result["requests_per_s"] * seconds
    result["api_cpu_ms_per_request"] = round(1000 * (tree_cpu_seconds(service.api.pid) - cpu_before) / served, 2)
    return result


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children, from /proc: the API's cost, apart from wrk's."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return own + sum(tree_cpu_seconds(int(child)) for child in out.split())


def parse_wrk(out: str) -> dict:
    def ms(text: str) -> float:
        found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
        if found is None:
            raise ValueError(f"wrk's output has no latency where expected:\n{out}")
        value, unit = found.groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1)  # not the "62.50%" of a Stdev column
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "p50_ms": ms(p50),
        "p99_ms": ms(p99),
        "requests_per_s": rps,
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def measure_profile(model_dir: Path, server: str = "asgi", seconds: int = 10, top: int = 25) -> list[dict]:
    """py-spy (pip) on each API worker process while wrk polls a finished job; the functions most samples are in."""
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if spy is None:
        raise SystemExit("py-spy is missing: pip install -r requirements-dev.txt")
    with Service(model_dir, server=server) as service:
        session = requests.Session()
        job = service.wait(session, service.submit(session, steps=2), finished)
        run_wrk(service, job, 100, seconds=2)  # warm: connections, caches
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(service.api.pid)], capture_output=True, text=True)
        folded = [service.var / f"profile-{pid}.txt" for pid in out.stdout.split()]
        spies = [
            subprocess.Popen(
                [spy, "record", "--format", "raw", "--rate", "200", "--duration", str(seconds), "--nonblocking"]
                + ["--pid", path.stem.split("-")[1], "--output", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for path in folded
        ]
        run_wrk(service, job, 100, seconds=seconds)
        for spy in spies:
            spy.wait(timeout=60)
        return profile_shares([line for path in folded if path.exists() for line in path.read_text().splitlines()], top)


def profile_shares(lines: list[str], top: int) -> list[dict]:
    """Inclusive shares from py-spy's folded stacks ("frame;frame;frame count"): for each function (name and file),
    the fraction of all samples whose stack holds it. Only the project's, Django's, DRF's, psycopg's, asgiref's and
    uvicorn's functions are listed; the event loop and interpreter frames are in every stack and say nothing."""
    total = 0
    seen: dict[str, int] = {}
    wanted = ("diffusion_api/", "django/", "rest_framework/", "psycopg/", "asgiref/", "uvicorn/", "whitenoise/")
    for line in lines:
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        names = set()
        for frame in stack.split(";"):
            function, _, where = frame.partition(" (")
            path = where.split(":")[0]
            for root in wanted:
                if root in path:
                    names.add(f"{function} ({root}{path.split(root, 1)[1]})")
                    break
        for name in names:
            seen[name] = seen.get(name, 0) + samples
    ranked = sorted(seen.items(), key=lambda item: -item[1])[:top]
    return [{"function": name, "share": round(count / total, 3)} for name, count in ranked] if total else []


def measure_open_loop(model_dir: Path, clients: int, seconds: float, servers: tuple[str, ...]) -> list[dict]:
    resource.setrlimit(resource.RLIMIT_NOFILE, (2 * clients + 256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    rows = []
    for server in servers:
        with Service(model_dir, {"JOB_MAX_STEPS": "150"}, server=server) as service:
            session = requests.Session()
            jobs = [service.submit(session, steps=2, seed=seed) for seed in range(10)]
            jobs = [service.wait(session, job, finished) for job in jobs]
            jobs += [service.submit(session, steps=150, width=256, height=256, seed=seed) for seed in range(10)]
            paths = [urlparse(job["url"]).path for job in jobs]
            result = asyncio.run(_open_loop(paths, service.headers, clients, seconds))
            states = [session.get(job["url"], headers=service.headers, timeout=10).json()["status"] for job in jobs]
            rows.append({"server": server, "clients": clients, "seconds": seconds, **result, "jobs_at_end": states})
    return rows


async def _open_loop(paths: list[str], headers: dict, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    start = time.monotonic() + 1.0
    await asyncio.gather(
        *(
            _poll_on_schedule(paths[i % len(paths)], headers, start + i / clients, start + seconds, latencies, errors)
            for i in range(clients)
        )
    )
    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": round(1000 * percentile(latencies, 50), 2),
        "p99_ms": round(1000 * percentile(latencies, 99), 2),
        "max_ms": round(1000 * max(latencies), 2),
    }


async def _poll_on_schedule(path, headers, first: float, end: float, latencies: list, errors: list) -> None:
    """GET `path` once a second from `first` until `end` on one kept-alive connection; each latency from when the
    request was due, so a slow answer counts against the ones that had to wait behind it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\n"
    request += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    due = first
    try:
        while due < end:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
            await reader.readexactly(length)
            status = head.split(b" ", 2)[1]
            if status == b"200":
                latencies.append(time.monotonic() - due)
            else:
                errors.append(status.decode())
            due += 1.0
    finally:
        writer.close()


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


def measure_streams(model_dir: Path, streams: int, jobs: int, steps: int, size: int) -> dict:
    """`streams` event streams spread over `jobs` jobs that run one after another; each progress event's delay
    (arrival here minus the worker's `at`, one clock) and the status route under wrk with and without the streams."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (4 * streams + 256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    with Service(model_dir, {"JOB_MAX_STEPS": str(max(150, steps))}) as service:
        session = requests.Session()
        done = service.wait(session, service.submit(session, steps=2), finished)  # warm: the model loads here
        quiet = run_wrk(service, done, 10, seconds=5)
        followed = [service.submit(session, steps=steps, width=size, height=size, cache=False) for _ in range(jobs)]
        paths = [urlparse(job["url"]).path + "events" for job in followed]
        try:
            result = asyncio.run(_follow_all(service, paths, streams, done))
        except SystemExit:
            states = [session.get(job["url"], headers=service.headers, timeout=10).json()["status"] for job in followed]
            print(f"the followed jobs are now: {', '.join(states)}", flush=True)
            raise
        result["status_quiet"] = quiet
    return {"streams": streams, "jobs": jobs, "steps": steps, "size": size, **result}


async def _follow_all(service: Service, paths: list[str], streams: int, done: dict) -> dict:
    delays: list[float] = []
    ends: list[str] = []
    connected = asyncio.Semaphore(0)
    clients = [
        asyncio.create_task(_follow(paths[i % len(paths)], service.headers, delays, ends, connected))
        for i in range(streams)
    ]
    for _ in range(streams):
        await asyncio.wait_for(connected.acquire(), timeout=120)
    # All streams open, jobs running: the status route under that load.
    busy = await asyncio.to_thread(run_wrk, service, done, 10, 5)
    finished_in_time, late = await asyncio.wait(clients, timeout=STREAM_DEADLINE)
    if late:
        got = ends.count("end")
        raise SystemExit(f"{len(late)} of {streams} streams did not end within {STREAM_DEADLINE} s ({got} got `end`)")
    for client in finished_in_time:
        client.result()  # a client's error, if any
    return {
        "events": len(delays),
        "delay_p50_ms": 1000 * percentile(delays, 50),
        "delay_p99_ms": 1000 * percentile(delays, 99),
        "streams_ended": ends.count("end"),
        "status_with_streams": busy,
    }


async def _follow(path: str, headers: dict, delays: list[float], ends: list[str], connected) -> None:
    """One event stream over a raw socket (HTTP/1.1, chunked): light enough that 500 fit in this process."""
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    auth = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Accept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"{path}: {status!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    connected.release()
    buffer = b""
    while True:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            break
        buffer += await reader.readexactly(size + 2)
        buffer = buffer[:-2] if buffer.endswith(b"\r\n") else buffer
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            fields = dict(line.split(": ", 1) for line in event.decode().splitlines() if ": " in line)
            if fields.get("event") == "progress":
                at = json.loads(fields["data"]).get("at")
                if at is not None:
                    delays.append(time.time() - at)
            elif fields.get("event") == "end":
                ends.append("end")
    writer.close()


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
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-server", default="asgi", help="--profile: the server kind profiled")
    parser.add_argument("--profile-seconds", type=int, default=10, help="--profile: how long py-spy samples")
    parser.add_argument("--streams", type=int, default=0, help="this many event streams (the issue asks for 500)")
    parser.add_argument("--stream-jobs", type=int, default=4, help="--streams: jobs the streams follow")
    parser.add_argument("--stream-steps", type=int, default=150, help="--streams: steps of each followed job")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--latency-jobs", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="--polling: runs of each server kind, alternating")
    parser.add_argument(
        "--servers",
        default="wsgi,asgi",
        help="--polling, --open-loop: server kinds, of wsgi, asgi and asgi-direct (ASGI without kept status answers)",
    )
    parser.add_argument("--open-loop", type=int, default=0, help="this many clients each polling once a second")
    parser.add_argument("--open-loop-seconds", type=float, default=30)
    parser.add_argument("--seconds", type=float, default=60, help="length of each throughput measurement")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps of each throughput job")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between a client's polls")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from generator import TinyModelConfig, make_tiny_model

    tiny = make_tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny", TinyModelConfig(sample_size=32))
    servers = tuple(args.servers.split(","))
    results: dict = {"machine": {"cpus": os.cpu_count(), "load_start": os.getloadavg()}}
    if args.all or args.latency:
        results["latency"] = row = measure_latency(tiny, args.latency_jobs)
        print(
            f"POST → the worker's first step, idle ({args.latency_jobs} jobs):\n"
            "| part | p50 ms | p99 ms |\n|---|---|---|"
        )
        for part in LATENCY_PARTS:
            print(f"| {part} | {row[part + '_p50_ms']} | {row[part + '_p99_ms']} |", flush=True)
    if args.all or args.polling:
        results["polling"] = measure_polling(tiny, args.repeat, servers)
        for row in results["polling"]:
            print(
                f"GET job ({row['server']}, median of {row['runs']}), {row['connections']} connections: "
                f"p50 {row['p50_ms']:.1f} ms, "
                f"p99 {row['p99_ms']:.1f} ms,"
                f" {row['requests_per_s']:.0f} req/s, non-2xx {row['non_2xx']}",
                flush=True,
            )
    if args.open_loop:
        results["open_loop"] = measure_open_loop(tiny, args.open_loop, args.open_loop_seconds, servers)
        for row in results["open_loop"]:
            print(
                f"GET job ({row['server']}), {row['clients']} clients once a second for {row['seconds']:.0f} s: "
                f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, worst {row['max_ms']:.1f} ms, "
                f"{row['requests']} requests, {row['errors']} errors; jobs at the end: "
                f"{', '.join(sorted(set(row['jobs_at_end'])))}",
                flush=True,
            )
    if args.profile:
        results["profile"] = measure_profile(tiny, args.profile_server, args.profile_seconds)
        print("| share of samples | function |\n|---|---|")
        for row in results["profile"]:
            print(f"| {100 * row['share']:.0f}% | `{row['function']}` |", flush=True)
    if args.all or args.streams:
        streams = args.streams or 500
        results["streams"] = row = measure_streams(tiny, streams, args.stream_jobs, args.stream_steps, 64)
        print(
            f"{row['streams']} event streams over {row['jobs']} jobs: {row['events']} progress events, delay after the "
            f"worker's step p50 {row['delay_p50_ms']:.1f} ms, p99 {row['delay_p99_ms']:.1f} ms; "
            f"{row['streams_ended']} streams got their end event",
            flush=True,
        )
        for label, key in (("without", "status_quiet"), ("with", "status_with_streams")):
            wrk = row[key]
            print(
                f"GET job, 10 connections, {label} the streams: p50 {wrk['p50_ms']:.1f} ms, "
                f"p99 {wrk['p99_ms']:.1f} ms, {wrk['requests_per_s']:.0f} req/s",
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
