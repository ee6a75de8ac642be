import re
import subprocess
import sys
from pathlib import Path

GENERATOR = Path(__file__).resolve().parents[2] / "generator"


def test_generator_imports_neither_django_nor_celery():
    code = (
        "import sys, generator, generator.pipeline, generator.__main__; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'django', 'celery', 'rest_framework'}); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generator_reads_no_environment_variables():
    offenders = [str(path) for path in GENERATOR.rglob("*.py") if re.search(r"os\.environ|getenv\(", path.read_text())]
    assert offenders == []


def test_model_info_and_scheduler_names_need_no_torch(tiny_model_dir):
    code = (
        "import sys, generator.model_info as m, generator.schedulers as s; "
        f"info = m.read_model_info({str(tiny_model_dir)!r}); "
        "assert info.defaults.width == 32 and 'ddim' in s.SCHEDULERS, info; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
