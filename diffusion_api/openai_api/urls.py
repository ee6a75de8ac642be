"""OpenAI's Images API at /v1/: every request becomes a job of the native API."""

app_name = "openai"

urlpatterns = []
