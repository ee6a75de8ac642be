"""OpenAI's Images API at /v1/: every request becomes a job of the native API."""

from django.urls import path, re_path

from diffusion_api.openai_api import errors, views

app_name = "openai"

urlpatterns = [
    path("images/generations", views.GenerationsView.as_view(), name="generations"),
    path("images/edits", views.EditsView.as_view(), name="edits"),
    path("images/variations", views.VariationsView.as_view(), name="variations"),
    path("images/files/<str:token>.png", views.ImageFileView.as_view(), name="image-file"),
    path("models", views.ModelsView.as_view(), name="models"),
    path("models/<str:model>", views.ModelView.as_view(), name="model"),
    re_path(r"", errors.not_found),  # any other path under /v1/: OpenAI's 404, in its envelope
]
