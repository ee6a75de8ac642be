"""A jobs worker states its engine (health, manifests) and refuses to start on one its machine cannot run."""

import os
import subprocess
import sys

import pytest

from diffusion_api.jobs import selectors
from diffusion_api.processes import ROOT
from worker import runner, tasks


@pytest.mark.django_db
def test_the_heartbeat_carries_the_engine(settings, monkeypatch):
    settings.GENERATOR_DTYPE, settings.GENERATOR_BACKEND = "fp32", "eager"
    monkeypatch.setattr(tasks._stop_heartbeat, "wait", lambda seconds: tasks._stop_heartbeat.set())
    monkeypatch.setattr(tasks.connection, "close", lambda: None)  # the test's transaction holds this connection
    tasks._stop_heartbeat.clear()
    tasks._heartbeat_forever("engine-test@host", [settings.CELERY_TASK_DEFAULT_QUEUE])
    tasks._stop_heartbeat.clear()
    (worker,) = selectors.workers_alive().filter(hostname="engine-test@host").values("engine")
    assert worker["engine"] == {**runner.engine().as_dict(), "device": "cpu", "dtype": "fp32", "backend": "eager"}
    assert "eager asked for" in worker["engine"]["reason"]


def test_a_worker_asked_to_compile_without_a_compiler_does_not_start(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with python alone: no g++, c++ or clang++
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")},
        "PATH": str(bin_dir), "VAR_DIR": str(tmp_path / "var"), "GENERATOR_DEVICE": "cpu",
        "GENERATOR_BACKEND": "compile", "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "diffusion_api", "worker", "-c", "1", "-Q", "jobs", "-l", "INFO"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    assert "the worker cannot start: GENERATOR_BACKEND=compile needs a C++ compiler" in done.stdout + done.stderr
