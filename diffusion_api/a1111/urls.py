"""AUTOMATIC1111's web UI API at /sdapi/v1/: every request becomes a job of the native API."""

from django.urls import path

from diffusion_api.a1111 import views

app_name = "a1111"

urlpatterns = [
    path("txt2img", views.Txt2ImgView.as_view(), name="txt2img"),
    path("img2img", views.Img2ImgView.as_view(), name="img2img"),
    path("progress", views.ProgressView.as_view(), name="progress"),
    path("interrupt", views.InterruptView.as_view(), name="interrupt"),
    path("skip", views.SkipView.as_view(), name="skip"),
    path("options", views.OptionsView.as_view(), name="options"),
    path("sd-models", views.SdModelsView.as_view(), name="sd-models"),
    path("samplers", views.SamplersView.as_view(), name="samplers"),
    path("schedulers", views.SchedulersView.as_view(), name="schedulers"),
    path("upscalers", views.UpscalersView.as_view(), name="upscalers"),
    path("latent-upscale-modes", views.LatentUpscaleModesView.as_view(), name="latent-upscale-modes"),
    path("loras", views.LorasView.as_view(), name="loras"),
    path("scripts", views.ScriptsView.as_view(), name="scripts"),
    path("png-info", views.PngInfoView.as_view(), name="png-info"),
]
