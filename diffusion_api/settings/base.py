"""Settings shared by every deployment. Everything that differs between deployments comes from the environment."""

import ipaddress
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parents[2]
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None else int(value)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value is None else float(value)


SECRET_KEY = os.environ.get("SECRET_KEY", "")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",  # only for accounts' migration 0002, which hashes its old clear-text keys
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from here: nothing is fetched from a CDN
    "diffusion_api.jobs",
    "diffusion_api.openai_api",  # OpenAI's Images API at /v1/
    "diffusion_api.a1111",  # A1111's API at /sdapi/v1/
    "diffusion_api.registry",  # the models and LoRAs on disk (scan_models), managed in the admin
    "axes",  # admin login lockout
    "diffusion_api.accounts",  # hashed API tokens; after rest_framework.authtoken, whose admin it unregisters
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "diffusion_api.jobs.middleware.StaticFilesMiddleware",  # whitenoise: static files (admin, API docs) from gunicorn
    "diffusion_api.jobs.middleware.BodySizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "diffusion_api.jobs.middleware.JobLogContextMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # turns a locked-out admin login into a 429 page
]

# A locked-out admin login is refused before any password is hashed (accounts.backends.AdminLoginLimit).
AUTHENTICATION_BACKENDS = [
    "diffusion_api.accounts.backends.AdminLoginLimit",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "diffusion_api.urls"
WSGI_APPLICATION = "diffusion_api.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# PostgreSQL with DATABASE_URL; a SQLite file otherwise, so the demo needs no server.
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,  # a reused connection is checked first: the API survives a database restart
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Two processes (API and worker) write to one file: wait for the lock instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
# Job images, uploads and job inputs go through Django's storage API (docs/storage.md): the file system under
# MEDIA_ROOT, or an S3-compatible store (AWS S3, MinIO) when AWS_STORAGE_BUCKET_NAME is set.
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
AWS_STORAGE_BUCKET_NAME = os.environ.get("AWS_STORAGE_BUCKET_NAME", "")
# Seconds an image's `url` (a presigned link straight to the store) works; after that, or altered, the store says 403.
IMAGE_URL_EXPIRES_SECONDS = env_int("IMAGE_URL_EXPIRES_SECONDS", 3600)
# One try of a store request (connect, then each read) and the tries per request; then the bytes are held in the
# database (writes) or the answer says the store is unavailable (reads). Health tries once: 2 s to connect, 2 to read.
STORAGE_TIMEOUT_SECONDS = env_float("STORAGE_TIMEOUT_SECONDS", 5)
STORAGE_MAX_ATTEMPTS = env_int("STORAGE_MAX_ATTEMPTS", 2)
# The sweeper tries a held image again after 15, 30, 60 … seconds, at most this far apart, until the store takes it.
STORAGE_RETRY_MAX_SECONDS = env_int("STORAGE_RETRY_MAX_SECONDS", 600)
# Seconds after a job ends that its images are kept (0: for ever); then their bytes are deleted, their records kept.
JOB_RESULT_RETENTION_SECONDS = env_int("JOB_RESULT_RETENTION_SECONDS", 0)


def s3_storage(
    *,
    bucket: str,
    endpoint_url: str = "",
    public_endpoint_url: str = "",
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str = "us-east-1",
    addressing_style: str = "",
    timeout: float | None = None,
    attempts: int | None = None,
) -> dict:
    """STORAGES["default"] for an S3-compatible store (django-storages' S3Storage, diffusion_api/jobs/s3.py), with
    this deployment's link lifetime, timeouts and tries. The tests call it for their local S3 server too."""
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    timeout = STORAGE_TIMEOUT_SECONDS if timeout is None else timeout
    attempts = STORAGE_MAX_ATTEMPTS if attempts is None else attempts
    return {
        "BACKEND": "diffusion_api.jobs.s3.S3ImageStorage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint_url or None,  # None: AWS itself
            # Links are signed for the address clients reach the store at, when it differs from ours (compose).
            "public_endpoint_url": public_endpoint_url,
            "access_key": access_key,  # None: boto3's own chain (environment, an IAM role)
            "secret_key": secret_key,
            "region_name": region,
            "querystring_auth": True,  # the bucket stays private: every link is presigned
            "querystring_expire": IMAGE_URL_EXPIRES_SECONDS,
            "default_acl": None,
            "file_overwrite": True,  # names are unique to their bytes (store.image_name): a rewrite is the same file
            "client_config": Config(
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"total_max_attempts": attempts, "mode": "standard"},
                signature_version="s3v4",
                # MinIO and other stores behind one host name want the bucket in the path, not in the host name.
                s3={"addressing_style": addressing_style or ("path" if endpoint_url else "auto")},
            ),
            # open()'s managed download would GET a stalled body 5 times over; the client's tries are the bound.
            "transfer_config": TransferConfig(num_download_attempts=1),
        },
    }


_default_storage = (
    s3_storage(
        bucket=AWS_STORAGE_BUCKET_NAME,
        endpoint_url=os.environ.get("AWS_S3_ENDPOINT_URL", ""),
        public_endpoint_url=os.environ.get("AWS_S3_PUBLIC_ENDPOINT_URL", ""),
        access_key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
        region=os.environ.get("AWS_S3_REGION_NAME", "us-east-1"),
        addressing_style=os.environ.get("AWS_S3_ADDRESSING_STYLE", ""),
    )
    if AWS_STORAGE_BUCKET_NAME
    else {"BACKEND": "django.core.files.storage.FileSystemStorage"}
)
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # serve static files without collectstatic too (demo, tests)

SPECTACULAR_SETTINGS = {
    "TITLE": "Diffusion job service",
    "DESCRIPTION": "Queue text-to-image jobs, poll them, fetch their PNGs. Token auth: `Authorization: Token <key>`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "diffusion_api.jobs.models.JobStatus",
        "HealthStatusEnum": ["ok", "degraded", "down"],
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["diffusion_api.accounts.authentication.HashedTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["diffusion_api.jobs.parsers.SafeJSONParser"],  # JSONParser + a nesting limit
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": [],
    "NUM_PROXIES": 0,  # DRF's own idea of the client ignores X-Forwarded-For; ours is jobs.throttling.client_ip
    "DEFAULT_THROTTLE_RATES": {
        "job_create": os.environ.get("JOB_CREATE_RATE", "60/min"),
        "token": os.environ.get("TOKEN_RATE", "30/min"),
        "token_username": os.environ.get("TOKEN_USERNAME_RATE", "10/hour"),
    },
}
# Proxies whose X-Forwarded-For is believed (addresses or networks, comma-separated): the client is the rightmost
# address in the header that is not one of them. Empty: the header is ignored and the peer address is the client.
# Parsed here so that a typo stops the process at start, not every request later.
TRUSTED_PROXIES = [
    str(ipaddress.ip_network(proxy.strip(), strict=False))
    for proxy in os.environ.get("TRUSTED_PROXIES", "").split(",")
    if proxy.strip()
]
TOKEN_MAX_PER_USER = env_int("TOKEN_MAX_PER_USER", 10)  # live API keys a user may hold; issuing more revokes the oldest

# Admin login limit (django-axes): after ADMIN_LOGIN_FAILURE_LIMIT failures from one address (any username), or for
# one username (any address), that address or username is refused (429) for ADMIN_LOGIN_COOLOFF_MINUTES.
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("ADMIN_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "diffusion_api.jobs.throttling.client_ip"
AXES_WHITELIST_CALLABLE = "diffusion_api.accounts.backends.only_admin_logins"
AXES_ONLY_ADMIN_SITE = True
# Throttle counters must be shared by every API process: Redis when there is one.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": os.environ["REDIS_URL"]}
    if os.environ.get("REDIS_URL")
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

LOG_FORMAT = os.environ.get("LOG_FORMAT", "json")  # json: one object a line, for log collectors; plain: for people
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"job": {"()": "diffusion_api.logs.JobContextFilter"}},
    "formatters": {
        "json": {"()": "diffusion_api.logs.JsonFormatter"},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [job=%(job_id)s] %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["job"]}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")  # set: /metrics wants `Authorization: Bearer <token>`
METRICS_REQUIRE_TOKEN = False  # production: True, so /metrics is not served at all without METRICS_TOKEN
API_DOCS_PUBLIC = env_bool("API_DOCS_PUBLIC", True)  # /api/schema/ and /api/docs/; production's default is False
# Seconds a /sdapi/v1/ txt2img or img2img request waits for its job to end before answering 202 (the job goes on).
A1111_WAIT_SECONDS = env_float("A1111_WAIT_SECONDS", 600)

# --- Models the service offers: MODELS="name=/path,other=/path"; the first is the default.
# The default is the built-in model trained on shapes64, kept in the repository (models/shapes64; MODEL_CARD.md).
# `tiny` (a random model for tests, made by `python -m generator make-tiny`) is made at first use if named here.
BUILTIN_MODEL_DIR = BASE_DIR / "models" / "shapes64"
TINY_MODEL_DIR = VAR_DIR / "models" / "tiny"
MODELS = {
    name.strip(): Path(path.strip())
    for name, path in (
        item.split("=", 1) for item in os.environ.get("MODELS", f"shapes64={BUILTIN_MODEL_DIR}").split(",")
    )
}
DEFAULT_MODEL = next(iter(MODELS))
# Beside MODELS, the registry (`manage.py scan_models DIR`, the admin) names more models and the LoRAs.

# --- Which models a worker serves: "*" (every model the service offers when the worker starts) or names, as
# WORKER_MODELS="shapes64,sd15". It consumes those models' queues (jobs.<name>) and claims only their jobs.
WORKER_MODELS = [name.strip() for name in os.environ.get("WORKER_MODELS", "*").split(",") if name.strip()]
# Megabytes of weights a worker keeps loaded; past it, the least recently used models are unloaded. 0: one at a time.
WORKER_MODEL_MEMORY_MB = env_int("WORKER_MODEL_MEMORY_MB", 0)

# --- Where the worker runs the model.
GENERATOR_DEVICE = os.environ.get("GENERATOR_DEVICE", "auto")  # auto: cuda when present, else cpu
# auto (generator/backends.py): bf16 on CPUs with AVX-512 BF16 or AMX, fp32 on other CPUs, fp16 on CUDA. An explicit
# dtype the machine cannot run natively (bf16 on an AVX2-only CPU) stops the worker at start, naming what is missing.
GENERATOR_DTYPE = os.environ.get("GENERATOR_DTYPE", "auto")  # auto, fp32, fp16 or bf16
# auto: torch.compile (the GENERATOR_COMPILE buckets) on a CPU with a C++ compiler, eager otherwise; eager; compile.
GENERATOR_BACKEND = os.environ.get("GENERATOR_BACKEND", "auto")
# The fast path (generator/fastpath.py). Channels-last memory for the UNet and VAE convolutions.
GENERATOR_CHANNELS_LAST = env_bool("GENERATOR_CHANNELS_LAST", True)
# Shapes to torch.compile the default model's UNet for when a worker starts: WIDTHxHEIGHTxIMAGES, comma-separated
# (e.g. "64x64x1,64x64x4"); smaller batches of one size are padded into a compiled one, other shapes run eager.
GENERATOR_COMPILE = os.environ.get("GENERATOR_COMPILE", "")
# Also compile what requests with guidance_cutoff < 1 or deep_cache_interval > 1 run (the prompts-only batch and
# DeepCache's full and shallow steps): four graphs a bucket instead of one, so a longer first start.
GENERATOR_COMPILE_FEWER_EVALS = env_bool("GENERATOR_COMPILE_FEWER_EVALS", False)
# inductor's on-disk cache of compiled kernels: a restarted worker compiles its buckets again, but faster.
GENERATOR_COMPILE_CACHE_DIR = Path(os.environ.get("GENERATOR_COMPILE_CACHE_DIR", VAR_DIR / "compile-cache"))
GENERATOR_DECODER = os.environ.get("GENERATOR_DECODER", "vae")  # vae, or tiny: the model's own tiny_vae/ decoder

# --- Request limits: going over any of them is a 400 that names the allowed range.
JOB_MAX_PIXELS = env_int("JOB_MAX_PIXELS", 768 * 768)
JOB_MAX_SIDE = env_int("JOB_MAX_SIDE", 2048)  # lowers generator.limits.MAX_SIDE (4096); cannot raise it
JOB_MAX_STEPS = env_int("JOB_MAX_STEPS", 150)
JOB_MAX_IMAGES = env_int("JOB_MAX_IMAGES", 4)
JOB_MAX_PROMPT_CHARS = env_int("JOB_MAX_PROMPT_CHARS", 500)
JOB_MAX_GUIDANCE = env_float("JOB_MAX_GUIDANCE", 30.0)
JOB_MAX_BODY_BYTES = env_int("JOB_MAX_BODY_BYTES", 16 * 1024)  # an API request body larger than this is a 413
# Bodies that carry images (POST uploads/, and POST jobs/ with init_image or mask) may be this large instead.
JOB_MAX_IMAGE_BODY_BYTES = env_int("JOB_MAX_IMAGE_BODY_BYTES", 8 * 1024 * 1024)
# An input image whose header declares more pixels than this is refused before it is decoded (decompression bombs).
DATA_UPLOAD_MAX_MEMORY_SIZE = JOB_MAX_IMAGE_BODY_BYTES  # Django's own cap on a body read whole: not below ours
UPLOAD_MAX_PIXELS = env_int("UPLOAD_MAX_PIXELS", 4096 * 4096)
# Seconds an upload may be referenced by new jobs; the sweeper deletes it after (a job keeps its own fitted copy).
UPLOAD_RETENTION = env_int("UPLOAD_RETENTION", 24 * 3600)
JOB_MAX_ACTIVE_PER_USER = env_int("JOB_MAX_ACTIVE_PER_USER", 10)  # queued + running; more is a 429
JOB_MAX_QUEUE_DEPTH = env_int("JOB_MAX_QUEUE_DEPTH", 1000)  # queued jobs of all users; more is a 503
JOB_RETRY_AFTER = env_int("JOB_RETRY_AFTER", 30)  # seconds, in Retry-After of those answers
# Throttles (JOB_CREATE_RATE per user on POST jobs/; TOKEN_RATE per client and TOKEN_USERNAME_RATE per username on
# POST auth/token/): REST_FRAMEWORK.
JOB_PROGRESS_INTERVAL = env_float("JOB_PROGRESS_INTERVAL", 0.25)  # seconds between progress writes
# Seconds between a job's previews (GET jobs/{id}/events?previews=1, OpenAI partial images, A1111 current_image);
# made only while someone asks for them, and only with Redis.
JOB_PREVIEW_INTERVAL = env_float("JOB_PREVIEW_INTERVAL", 1.0)
# Prefer: wait=N on create holds the answer until the job ends, at most this many seconds.
JOB_MAX_WAIT_SECONDS = env_int("JOB_MAX_WAIT_SECONDS", 60)
# Status reads of unchanged jobs are answered again from Django's last answer after one query (jobs.status_reads),
# under ASGI with PostgreSQL; at most this many MB of answers per API process. 0: every read goes through Django.
STATUS_READ_CACHE_MB = env_int("STATUS_READ_CACHE_MB", 32)
# Cost admission: a job whose estimated run time (the model's measured seconds per step and megapixel-row on the
# workers × megapixels × rows × steps) is over JOB_COST_HEADROOM × JOB_SOFT_TIME_LIMIT is a 400 saying what fits.
# JOB_STEP_SECONDS_PER_MEGAPIXEL is the estimate before the workers have measured a model (a prior worth one
# megapixel-row step of evidence): conservative, about this project's CPUs on the built-in model.
JOB_STEP_SECONDS_PER_MEGAPIXEL = env_float("JOB_STEP_SECONDS_PER_MEGAPIXEL", 5.0)
JOB_COST_HEADROOM = env_float("JOB_COST_HEADROOM", 0.8)

# --- Webhooks: the final state of a job is POSTed to its webhook_url, signed with HMAC-SHA256.
WEBHOOK_SECRET = os.environ.get("WEBHOOK_SECRET", "")  # empty: derived from SECRET_KEY
WEBHOOK_ALLOWED_HOSTS = [h for h in os.environ.get("WEBHOOK_ALLOWED_HOSTS", "").split(",") if h]  # empty: any
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)  # loopback, private, link-local addresses
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 10)  # one try in all: connect, TLS, send, answer
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 6)
WEBHOOK_BACKOFF_SECONDS = env_float("WEBHOOK_BACKOFF_SECONDS", 5)  # 5, 10, 20, 40 … seconds between tries
WEBHOOK_BACKOFF_MAX_SECONDS = env_float("WEBHOOK_BACKOFF_MAX_SECONDS", 600)
PUBLIC_BASE_URL = os.environ.get("PUBLIC_BASE_URL", "")  # prefix of image URLs in webhook bodies

# --- The worker runs up to this many compatible queued jobs (same model, size, steps, scheduler) in one batch.
WORKER_BATCH_SIZE = env_int("WORKER_BATCH_SIZE", 4)

# --- Crash safety: a worker renews its lease on a running job; the sweeper takes back expired ones.
JOB_LEASE_SECONDS = env_int("JOB_LEASE_SECONDS", 60)
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3)  # a job that loses its worker this often ends `failed`
JOB_REPUBLISH_AFTER = env_int("JOB_REPUBLISH_AFTER", 120)  # seconds a queued job may lack a broker message
SWEEP_INTERVAL = env_float("SWEEP_INTERVAL", 15)

# --- Celery: broker, delivery guarantees and time limits, all in one block.
REDIS_URL = os.environ.get("REDIS_URL", "")
CELERY_BROKER_URL = REDIS_URL or "filesystem://"
if REDIS_URL:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Redis re-delivers an unacknowledged message after this; keep it above the hard time limit.
        "visibility_timeout": env_int("JOB_TIME_LIMIT", 1800) + 600,
    }
else:
    # The embedded broker: messages are files in a folder, shared by the API and the worker on one machine.
    BROKER_DIR = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
    for _folder in ("queue", "processed", "control"):  # Kombu's file transport expects them to exist
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
CELERY_TASK_IGNORE_RESULT = True  # job state lives in the database, not in a result backend
CELERY_TASK_ACKS_LATE = True  # a job whose worker dies mid-run is delivered again
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # a worker holds one job at a time
CELERY_TASK_SOFT_TIME_LIMIT = env_int("JOB_SOFT_TIME_LIMIT", 1500)
CELERY_TASK_TIME_LIMIT = env_int("JOB_TIME_LIMIT", 1800)
CELERY_TASK_DEFAULT_QUEUE = "jobs"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
WORKER_HEARTBEAT_SECONDS = env_int("WORKER_HEARTBEAT_SECONDS", 10)

# --- OpenAI's Images API at /v1/ (docs/openai.md).
OPENAI_WAIT_SECONDS = env_float("OPENAI_WAIT_SECONDS", 600)  # a request waits this long for its job, then a 504
OPENAI_URL_TTL = env_int("OPENAI_URL_TTL", 3600)  # seconds a `response_format: url` link works
# A request with the same body from the same user within this many seconds is a retry: it gets the earlier job.
OPENAI_RETRY_WINDOW = env_float("OPENAI_RETRY_WINDOW", 30)
# Variations are img2img of the image at this strength, under this prompt, without classifier-free guidance.
OPENAI_VARIATION_STRENGTH = env_float("OPENAI_VARIATION_STRENGTH", 0.6)
OPENAI_VARIATION_PROMPT = os.environ.get("OPENAI_VARIATION_PROMPT", "a picture")
