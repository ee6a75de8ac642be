"""For a laptop: debug on, a fixed development key, embedded defaults unless the environment says otherwise."""

import os

os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("LOG_FORMAT", "plain")

from diffusion_api.settings.base import *  # noqa: E402,F403

SECRET_KEY = SECRET_KEY or "local-development-key-not-for-production"  # noqa: F405
