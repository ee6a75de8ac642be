"""Locust users of the job service, as `benchmarks/bench_load.py` runs them (headless); usable alone too:

    LOAD_TOKENS=key1,key2 locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000

Two kinds of user, each with its own API key (LOAD_TOKENS, taken in turn), each making one job at a time:

* `Poller` (3 in 4): submits a job, reads its status once a second until it ends, then submits the next.
* `Streamer` (1 in 4): submits a job and follows its Server-Sent Events until `end`.

Jobs are the tiny model's, LOAD_STEPS steps (default 20), at its default size, each with its own prompt. A job that
ends is counted as a request named "job succeeded" (or "job failed"), its time being submission to end, so locust's
own tables give jobs per minute and their latency beside each route's.
"""

import itertools
import os
import random
import time

from locust import HttpUser, between, task

TOKENS = itertools.cycle(os.environ["LOAD_TOKENS"].split(","))
STEPS = int(os.environ.get("LOAD_STEPS", "20"))
ENDED = ("succeeded", "failed", "canceled")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")


class JobUser(HttpUser):
    abstract = True
    wait_time = between(0.5, 1.5)  # between one job's end and the next submission

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Token {next(TOKENS)}"

    @task
    def job(self) -> None:
        submitted = self.submit()
        if submitted is not None:
            self.follow(*submitted)

    def follow(self, path: str, started: float) -> None:
        raise NotImplementedError

    def submit(self) -> tuple[str, float] | None:
        prompt = f"a {random.choice(COLOURS)} {random.choice(SHAPES)}"
        started = time.perf_counter()
        with self.client.post("/api/v1/jobs/", json={"prompt": prompt, "steps": STEPS}, catch_response=True) as r:
            if r.status_code != 202:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return None
            return r.json()["url"].split("://", 1)[1].split("/", 1)[1], started

    def ended(self, status: str, started: float) -> None:
        self.environment.events.request.fire(
            request_type="JOB",
            name=f"job {status}",
            response_time=1000 * (time.perf_counter() - started),
            response_length=0,
            exception=None if status == "succeeded" else RuntimeError(status),
            context={},
        )


class Poller(JobUser):
    weight = 3

    def follow(self, path: str, started: float) -> None:
        while True:
            time.sleep(1.0)  # gevent's, under locust: other users go on meanwhile
            with self.client.get(f"/{path}", name="/api/v1/jobs/{id}/", catch_response=True) as r:
                if r.status_code != 200:
                    r.failure(f"{r.status_code}")
                    return
                status = r.json()["status"]
            if status in ENDED:
                self.ended(status, started)
                return


class Streamer(JobUser):
    weight = 1

    def follow(self, path: str, started: float) -> None:
        headers = {"Accept": "text/event-stream"}
        name = "/api/v1/jobs/{id}/events"  # its time is to the answer's headers; the job's own time is reported apart
        with self.client.get(f"/{path}events", name=name, headers=headers, stream=True, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}")
                return
            event = None
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "end":
                    status = "succeeded" if '"status": "succeeded"' in line else "failed"
                    self.ended(status, started)
                    return
            r.failure("the stream closed before its end event")
