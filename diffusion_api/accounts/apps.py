from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "diffusion_api.accounts"
    label = "accounts"
    verbose_name = "API access"
