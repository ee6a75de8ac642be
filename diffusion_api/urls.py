from django.contrib import admin
from django.urls import include, path

from diffusion_api.jobs.views import TokenView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/auth/token/", TokenView.as_view(), name="token"),
    path("api/v1/", include("diffusion_api.jobs.urls")),
]
