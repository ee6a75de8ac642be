"""AUTOMATIC1111's web UI API at /sdapi/v1/: every request becomes a job of the native API."""

app_name = "a1111"

urlpatterns = []
