from django.urls import path

from diffusion_api.jobs import views

app_name = "jobs"

urlpatterns = [
    path("jobs/", views.JobListCreateView.as_view(), name="list"),
    path("jobs/<uuid:job_id>/", views.JobDetailView.as_view(), name="detail"),
    path("jobs/<uuid:job_id>/events", views.JobEventsView.as_view(), name="events"),
    path("jobs/<uuid:job_id>/cancel/", views.JobCancelView.as_view(), name="cancel"),
    path("jobs/<uuid:job_id>/images/<int:index>.png", views.JobImageView.as_view(), name="image"),
    path("jobs/<uuid:job_id>/inputs/<str:name>.png", views.JobInputView.as_view(), name="input"),
    path("uploads/", views.UploadCreateView.as_view(), name="uploads"),
    path("models/", views.ModelsView.as_view(), name="models"),
    path("loras/", views.LorasView.as_view(), name="loras"),
    path("schedulers/", views.SchedulersView.as_view(), name="schedulers"),
    path("health/", views.HealthView.as_view(), name="health"),
]
