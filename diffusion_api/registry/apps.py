from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "diffusion_api.registry"
    verbose_name = "Model registry"
    default_auto_field = "django.db.models.BigAutoField"
