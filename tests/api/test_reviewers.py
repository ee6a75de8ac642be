"""A user made with `issue_token --staff` can review jobs in the admin, and do no more than review needs."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from diffusion_api.jobs import services
from diffusion_api.jobs.models import Job, ReviewStatus

pytestmark = pytest.mark.django_db
JOBS_ADMIN = "/admin/jobs/job/"


@pytest.fixture
def reviewer_client():
    call_command("issue_token", "rita", "--staff", "--password", "pw-rita", stdout=open("/dev/null", "w"))
    client = Client()
    assert client.login(username="rita", password="pw-rita")
    return client


@pytest.fixture
def job(alice, published):
    return services.job_create(owner=alice, prompt="a red circle", steps=2)


def test_a_staff_user_from_issue_token_can_list_open_and_review_jobs(reviewer_client, job):
    assert reviewer_client.get(JOBS_ADMIN).status_code == 200
    page = reviewer_client.get(f"{JOBS_ADMIN}{job.id}/change/")
    assert page.status_code == 200 and b'name="review_status"' in page.content  # editable, not read-only
    assert [inline.opts.model.__name__ for inline in page.context["inline_admin_formsets"]] == ["JobImage"]

    prefix = page.context["inline_admin_formsets"][0].formset.prefix  # the images inline's management form
    form = {"review_status": ReviewStatus.FLAGGED, f"{prefix}-TOTAL_FORMS": 0, f"{prefix}-INITIAL_FORMS": 0}
    response = reviewer_client.post(f"{JOBS_ADMIN}{job.id}/change/", form)
    assert response.status_code == 302, response.content[:2000]
    job.refresh_from_db()
    assert job.review_status == ReviewStatus.FLAGGED and job.reviewed_by.username == "rita"

    response = reviewer_client.post(JOBS_ADMIN, {"action": "approve_jobs", "_selected_action": [str(job.id)]})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.review_status == ReviewStatus.APPROVED


def test_a_reviewer_cannot_delete_jobs_or_manage_users(reviewer_client, job):
    assert reviewer_client.get(f"{JOBS_ADMIN}{job.id}/delete/").status_code == 403
    assert reviewer_client.get("/admin/auth/user/").status_code == 403
    assert Job.objects.filter(id=job.id).exists()
    rita = get_user_model().objects.get(username="rita")
    assert rita.is_staff and not rita.is_superuser
    assert rita.get_all_permissions() == {"jobs.view_job", "jobs.change_job", "jobs.view_jobimage"}


def test_the_admin_shows_and_filters_jobs_by_the_protocol_that_made_them(reviewer_client, alice, published):
    native = services.job_create(owner=alice, prompt="a red circle", steps=2)
    openai = services.job_create(owner=alice, prompt="a blue square", steps=2, protocol="openai")
    page = reviewer_client.get(JOBS_ADMIN, {"protocol__exact": "openai"})
    assert page.status_code == 200
    assert [job.id for job in page.context["cl"].result_list] == [openai.id]
    assert b'<td class="field-protocol">OpenAI Images API</td>' in page.content
    assert native.id not in [job.id for job in page.context["cl"].result_list]
