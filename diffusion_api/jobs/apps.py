from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "diffusion_api.jobs"
    label = "jobs"
    verbose_name = "Image jobs"
