from django.conf import settings
from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from django.views import defaults
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from diffusion_api.jobs.metrics import metrics_view
from diffusion_api.jobs.views import TokenView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/auth/token/", TokenView.as_view(), name="token"),
    path("api/v1/", include("diffusion_api.jobs.urls")),
    path("v1/", include("diffusion_api.openai_api.urls")),
    path("sdapi/v1/", include("diffusion_api.a1111.urls")),
]
# Served only where the settings say so (production: METRICS_TOKEN set; API_DOCS_PUBLIC=true); elsewhere a 404.
if settings.METRICS_TOKEN or not settings.METRICS_REQUIRE_TOKEN:
    urlpatterns.append(path("metrics", metrics_view, name="metrics"))
if settings.API_DOCS_PUBLIC:
    urlpatterns += [
        path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
        path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    ]


def not_found(request, exception=None):
    """JSON 404s under /api/ (e.g. a malformed job id); Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "not found"}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "internal server error"}, status=500)
    return defaults.server_error(request)


handler404 = not_found
handler500 = server_error
