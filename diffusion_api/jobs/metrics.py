"""`/metrics` in the Prometheus text format, computed from the database, so every API process agrees."""

import hmac

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Sum
from django.http import HttpResponse

from diffusion_api.jobs import selectors
from diffusion_api.jobs.models import Job, JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_view(request) -> HttpResponse:
    if settings.METRICS_TOKEN:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given, f"Bearer {settings.METRICS_TOKEN}"):
            return HttpResponse("metrics need a bearer token\n", status=401, content_type="text/plain")
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE)


def render_metrics() -> str:
    by_status = dict(Job.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    run_time = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    finished = Job.objects.filter(status=JobStatus.SUCCEEDED, started_at__isnull=False, finished_at__isnull=False)
    totals = finished.aggregate(jobs=Count("id"), seconds=Sum(run_time), steps=Sum("steps"))
    job_seconds = totals["seconds"].total_seconds() if totals["seconds"] else 0.0
    workers = selectors.workers_alive().count()

    lines = [
        "# HELP diffusion_jobs Jobs in the database by status.",
        "# TYPE diffusion_jobs gauge",
        *(f'diffusion_jobs{{status="{status}"}} {by_status.get(status, 0)}' for status in JobStatus.values),
        "# HELP diffusion_queue_depth Jobs waiting for a worker.",
        "# TYPE diffusion_queue_depth gauge",
        f"diffusion_queue_depth {by_status.get(JobStatus.QUEUED, 0)}",
        "# HELP diffusion_job_seconds Run time of succeeded jobs, from claim to stored images.",
        "# TYPE diffusion_job_seconds summary",
        f"diffusion_job_seconds_sum {job_seconds:.3f}",
        f"diffusion_job_seconds_count {totals['jobs']}",
        "# HELP diffusion_step_seconds Run time of succeeded jobs per denoising step (job time / steps).",
        "# TYPE diffusion_step_seconds summary",
        f"diffusion_step_seconds_sum {job_seconds:.3f}",
        f"diffusion_step_seconds_count {totals['steps'] or 0}",
        "# HELP diffusion_workers_alive Workers whose heartbeat is recent.",
        "# TYPE diffusion_workers_alive gauge",
        f"diffusion_workers_alive {workers}",
    ]
    return "\n".join(lines) + "\n"
