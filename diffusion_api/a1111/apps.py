from django.apps import AppConfig


class A1111Config(AppConfig):
    name = "diffusion_api.a1111"
    label = "a1111"
