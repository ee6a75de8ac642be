"""The admin, for staff review: thumbnails in the list, full images and parameters on a job's page."""

import base64

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.utils.html import format_html, format_html_join

from diffusion_api.jobs import selectors, services, store
from diffusion_api.jobs.models import PARAMETER_FIELDS, ImageState, Job, JobImage, ReviewStatus, Upload


def _src(image: JobImage) -> str | None:
    """Where the page loads the image from: a presigned link for an image in the object store (the browser fetches
    it, this process reads nothing), the bytes inline otherwise; None when they are gone (expired) or the store
    does not answer, so the page still opens and says why (_missing)."""
    if image.state == ImageState.STORED and store.is_object_store():
        return store.signed_url(image.file.name)
    try:
        return "data:image/png;base64," + base64.b64encode(selectors.image_png(image=image)).decode("ascii")
    except (selectors.ImageExpired, store.StoreUnavailable):
        return None


def _missing(image: JobImage) -> str:
    return "expired" if image.state == ImageState.EXPIRED else "the object store does not answer"


class JobImageInline(admin.TabularInline):
    model = JobImage
    # Where the bytes are (stored, held in the database until the store takes them, expired) and the store's last
    # refusal: what an operator looks at during and after an outage.
    fields = ("index", "seed", "width", "height", "state", "store_error", "picture")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="image")
    def picture(self, image: JobImage) -> str:
        uri = _src(image)
        if uri is None:
            return _missing(image)
        return format_html(
            '<img class="job-image" src="{}" width="{}" height="{}" alt="image {}">',
            uri,
            max(image.width, 256),
            max(image.height, 256),
            image.index,
        )


def _input_preview(file, alt: str) -> str:
    if not file:
        return "—"
    try:
        data = store.read(file.name)
    except store.StoreUnavailable as error:  # lost, or the store is down: say so rather than break the page
        return f"not readable from storage: {file.name} ({error})"
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return format_html('<img class="job-input" src="{}" width="256" alt="{}">', uri, alt)


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "format", "width", "height", "created_at", "expires_at")
    list_select_related = ("owner",)
    readonly_fields = ("id", "owner", "file", "sha256", "width", "height", "format", "created_at", "expires_at")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("short_id", "owner", "status", "protocol", "prompt", "thumbnails", "review_status", "created_at")
    list_filter = ("status", "protocol", "review_status", "model", "scheduler")
    search_fields = ("prompt", "owner__username")
    list_select_related = ("owner",)
    list_per_page = 25
    actions = ("cancel_jobs", "retry_jobs", "approve_jobs", "flag_jobs")
    inlines = (JobImageInline,)
    fieldsets = (
        ("Review", {"fields": ("review_status", "reviewed_by", "reviewed_at")}),
        (
            "Job",
            {
                "fields": (
                    "id",
                    "owner",
                    "status",
                    "protocol",
                    "error",
                    "attempts",
                    "worker",
                    "progress_step",
                    "progress_total",
                    "cancel_requested",
                    "retry_of",
                )
            },
        ),
        ("Parameters", {"fields": PARAMETER_FIELDS}),
        # Beside the outputs (the images inline below): what the job started from, as fitted to its size.
        ("Inputs", {"fields": ("mode", "init_image_preview", "init_image_sha256", "mask_preview", "mask_sha256")}),
        ("Timings", {"fields": ("created_at", "started_at", "finished_at")}),
    )

    def get_readonly_fields(self, request, obj=None):
        # Only the review verdict is edited here; every other change goes through an action.
        fields = [f.name for f in Job._meta.fields if f.name != "review_status"]
        return [*fields, "init_image_preview", "mask_preview"]

    @admin.display(description="init image")
    def init_image_preview(self, job: Job) -> str:
        return _input_preview(job.init_image, "init image")

    @admin.display(description="mask (white = repaint)")
    def mask_preview(self, job: Job) -> str:
        return _input_preview(job.mask_image, "mask")

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("images")

    def has_add_permission(self, request) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        if "review_status" in form.changed_data:
            services.job_review(job=obj, reviewer=request.user, verdict=obj.review_status)

    @admin.display(description="id")
    def short_id(self, job: Job) -> str:
        return str(job.id)[:8]

    @admin.display(description="images")
    def thumbnails(self, job: Job) -> str:
        shown = [(uri, image.index) for image in job.images.all() if (uri := _src(image)) is not None]
        return format_html_join(
            "",
            '<img class="job-thumbnail" src="{}" width="48" height="48" alt="thumbnail {}" style="margin:1px">',
            shown,
        )

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        done = 0
        for job in queryset:
            try:
                services.job_cancel(job=job)
                done += 1
            except services.JobConflict:
                pass
        self.message_user(request, f"Canceled {done} of {queryset.count()} jobs (finished jobs are left alone).")

    @admin.action(description="Retry selected jobs as new jobs")
    def retry_jobs(self, request, queryset):
        new, refused = [], []
        for job in queryset:
            try:
                new.append(services.job_retry(job=job))
            except ValidationError as error:  # e.g. it no longer fits the time limit (services._check_cost)
                refused.append(f"{job.id}: {'; '.join(error.messages)}")
            except store.StoreUnavailable as error:  # its input image could not be read or written
                refused.append(f"{job.id}: {error}")
        self.message_user(request, f"Queued {len(new)} new jobs.", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not retried: " + " | ".join(refused), messages.WARNING)

    @admin.action(description="Mark reviewed: approved")
    def approve_jobs(self, request, queryset):
        for job in queryset:
            services.job_review(job=job, reviewer=request.user, verdict=ReviewStatus.APPROVED)

    @admin.action(description="Mark reviewed: flagged")
    def flag_jobs(self, request, queryset):
        for job in queryset:
            services.job_review(job=job, reviewer=request.user, verdict=ReviewStatus.FLAGGED)
