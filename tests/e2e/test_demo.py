"""`make demo`'s script on embedded defaults: no DATABASE_URL, no REDIS_URL, a fresh VAR_DIR."""

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_built_in_model_on_sqlite_and_the_file_broker(tmp_path):
    unset = {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "MODELS"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(VAR_DIR=str(tmp_path / "var"), DEMO_PORT=str(free_port()))
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    result = subprocess.run(
        [sys.executable, "scripts/demo.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    saved = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("saved ")]
    assert len(saved) == 1
    assert Image.open(ROOT / saved[0]).size == (64, 64)  # the built-in model's size
    assert (tmp_path / "var" / "db.sqlite3").is_file() and (tmp_path / "var" / "broker" / "queue").is_dir()
