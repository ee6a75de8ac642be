"""Jobs and their images. State changes happen in services.py, as guarded updates, never in save()."""

import uuid

from django.conf import settings
from django.db import models


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)

# A job's request as resolved: what the API returns as `parameters`, the admin shows, and the cache compares.
PARAMETER_FIELDS = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "scheduler",
    "seed",
    "num_images",
    "model",
    "loras",  # [{"name", "weight", "sha256"}], sorted by name: applied to the model for this job (jobs/loras.py)
    # img2img / inpainting, variations, two-pass high resolution, fewer UNet evaluations (generator.limits.FIELDS;
    # a plain txt2img job leaves the defaults)
    "strength",
    "mask_blur",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "resize_mode",
    "subseed",
    "subseed_strength",
    "hires_scale",
    "hires_upscaler",
    "hires_steps",
    "hires_strength",
    "guidance_cutoff",
    "deep_cache_interval",
)
# A job's input images as stored with it (fitted to its size by the web process), and the mode they give it.
INPUT_FIELDS = ("mode", "init_image", "init_image_sha256", "mask_image", "mask_sha256")


class JobMode(models.TextChoices):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"


class JobProtocol(models.TextChoices):
    """Which API created the job: the native one, OpenAI's Images API (/v1/) or A1111's (/sdapi/v1/)."""

    NATIVE = "native", "native API"
    OPENAI = "openai", "OpenAI Images API"
    A1111 = "a1111", "A1111 API"


class ReviewStatus(models.TextChoices):
    UNREVIEWED = "unreviewed"
    APPROVED = "approved"
    FLAGGED = "flagged"


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)

    # The request, as resolved (defaults filled in, seed drawn).
    model = models.CharField(max_length=100)
    loras = models.JSONField(default=list, blank=True)  # [{"name", "weight", "sha256"}] sorted by name; [] for none
    prompt = models.TextField()
    negative_prompt = models.TextField(blank=True, default="")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    steps = models.PositiveIntegerField()
    guidance_scale = models.FloatField()
    scheduler = models.CharField(max_length=32)
    seed = models.BigIntegerField()
    num_images = models.PositiveSmallIntegerField()
    # Derived from the inputs as generator.pipeline does: inpaint with a mask, img2img with an init image only.
    mode = models.CharField(max_length=16, choices=JobMode.choices, default=JobMode.TXT2IMG)
    strength = models.FloatField(default=0.75)
    mask_blur = models.PositiveSmallIntegerField(default=4)
    inpaint_full_res = models.BooleanField(default=False)
    inpaint_full_res_padding = models.PositiveSmallIntegerField(default=32)
    resize_mode = models.CharField(max_length=32, default="just_resize")
    subseed = models.BigIntegerField(null=True, blank=True)
    subseed_strength = models.FloatField(default=0.0)
    hires_scale = models.FloatField(default=1.0)
    hires_upscaler = models.CharField(max_length=32, default="latent")
    hires_steps = models.PositiveIntegerField(default=0)
    hires_strength = models.FloatField(default=0.5)
    guidance_cutoff = models.FloatField(default=1.0)  # share of the steps with classifier-free guidance
    deep_cache_interval = models.PositiveSmallIntegerField(default=1)  # DeepCache: deep blocks every k steps; 1: off
    # The inputs, already at width × height (PNG in storage, named by content), and their pixel hashes
    # (generator.images.image_sha256): the result cache and the batch claim compare the hashes.
    init_image = models.FileField(max_length=200, blank=True, default="")
    init_image_sha256 = models.CharField(max_length=64, blank=True, default="")
    mask_image = models.FileField(max_length=200, blank=True, default="")
    mask_sha256 = models.CharField(max_length=64, blank=True, default="")

    # Progress and outcome.
    progress_step = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True, default="")
    # The running worker renews this; past it, the sweeper takes the job back (see services.job_sweep).
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)  # last hand-over to the broker
    # Why a queued job waits beyond its turn: no live worker serves its model (set at submission and by the sweeper).
    waiting_reason = models.CharField(max_length=300, blank=True, default="")

    # Create is idempotent per (owner, Idempotency-Key); the fingerprint tells a retry from a different body.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")
    webhook_url = models.URLField(max_length=2000, blank=True, default="")
    protocol = models.CharField(max_length=16, choices=JobProtocol.choices, default=JobProtocol.NATIVE)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set when the job ends, JOB_RESULT_RETENTION_SECONDS after (null: kept for ever); past it the sweeper deletes
    # the images' bytes and keeps their records (services.image_expiry_sweep).
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    # Review by staff in the admin.
    review_status = models.CharField(max_length=16, choices=ReviewStatus.choices, default=ReviewStatus.UNREVIEWED)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    # The result cache: an identical request with an explicit seed copies the images of an earlier job.
    model_version = models.CharField(max_length=32, blank=True, default="")  # catalog.model_version at creation
    cached_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Set when the job's batch failed as a whole: it is retried without batch mates, so a failure is its own.
    run_alone = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"]),
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["seed", "prompt"], name="jobs_cache_lookup"),
            # The fair claim order (selectors.jobs_queued_fairly) reads each waiting owner's running jobs and
            # latest start.
            models.Index(fields=["owner", "status"], name="jobs_owner_status"),
            models.Index(fields=["owner", "-started_at"], name="jobs_owner_last_started"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="one_job_per_owner_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def percent(self) -> float:
        if self.status == JobStatus.SUCCEEDED:
            return 100.0
        return round(100.0 * self.progress_step / self.progress_total, 1) if self.progress_total else 0.0


class ImageState(models.TextChoices):
    """Where an image's bytes are (docs/storage.md)."""

    STORED = "stored"  # in Django's storage, under `file`: the file system or an S3-compatible store
    HELD = "held"  # in the database (`png`) until the store takes them: the store failed when the job ended
    EXPIRED = "expired"  # deleted after the job's retention; the record stays


class JobImage(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="images")
    index = models.PositiveSmallIntegerField()
    seed = models.BigIntegerField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    state = models.CharField(max_length=8, choices=ImageState.choices, default=ImageState.HELD)
    file = models.FileField(max_length=200, blank=True, default="")  # images/<job id>/<index>-<sha256[:16]>.png
    # The bytes while they are held: a job whose store is down still ends with its images, and the sweeper moves
    # them to the store when it answers again (services.image_store_sweep). Null once stored or expired.
    png = models.BinaryField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True, default="")  # of the PNG's bytes
    size = models.PositiveIntegerField(default=0)  # bytes
    # The store's refusals of a held image: how many, the last one, and when the sweeper tries again (backoff).
    store_attempts = models.PositiveIntegerField(default=0)
    store_error = models.TextField(blank=True, default="")
    store_after = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="one_image_per_job_index")]
        indexes = [
            # The sweeper's and health's reads of held images, without scanning every image ever made.
            models.Index(fields=["store_after"], condition=models.Q(state="held"), name="jobimage_held"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.index}"


class Upload(models.Model):
    """An input image a user uploaded once to reference from jobs (POST uploads/). Checked, EXIF-rotated and stored
    as PNG under its content hash, so the same picture uploaded twice is one file. Usable until `expires_at`."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads")
    file = models.FileField(max_length=200)
    sha256 = models.CharField(max_length=64, db_index=True)  # of the stored PNG's bytes
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField(max_length=8)  # as sent: PNG, JPEG or WEBP
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"upload {self.id} ({self.width}×{self.height} {self.format})"


class WorkerHeartbeat(models.Model):
    """Each live worker writes here every few seconds; health reads it (works with any broker)."""

    hostname = models.CharField(max_length=200, primary_key=True)
    pid = models.PositiveIntegerField()
    last_seen = models.DateTimeField()
    queues = models.JSONField(default=list)  # the queues it consumes: only "jobs" consumers run jobs
    # What it runs them with (generator/backends.py): device, dtype, backend and why; {} for a non-job worker.
    engine = models.JSONField(default=dict)
    models = models.JSONField(default=list)  # the models this worker serves (this name hides the module below)


class ModelStepCost(models.Model):
    """What one denoising step of a model costs on one worker host, measured by that worker (worker/runner.py).

    Kept as running totals of seconds and megapixel-rows (width × height / 10⁶ × UNet rows, a row being one image,
    two under classifier-free guidance), both decayed at each update, so their ratio follows the host's current
    speed and is weighted towards large batches, where a step's fixed overhead no longer counts.
    """

    model = models.CharField(max_length=100)
    host = models.CharField(max_length=200)
    seconds = models.FloatField(default=0.0)
    megapixel_rows = models.FloatField(default=0.0)
    measured_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "host"], name="one_step_cost_per_model_host")]

    def __str__(self) -> str:
        return f"{self.model} on {self.host}"


class WebhookStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(models.Model):
    """The POST of a job's final state to its webhook_url; one per job, retried with backoff."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="webhook_delivery")
    url = models.URLField(max_length=2000)
    status = models.CharField(max_length=16, choices=WebhookStatus.choices, default=WebhookStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"webhook for {self.job_id} ({self.status})"
