from django.apps import AppConfig


class OpenAIConfig(AppConfig):
    name = "diffusion_api.openai_api"
    label = "openai_api"
