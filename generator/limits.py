"""Hard limits of the engine, importable without torch (the web service checks them too)."""

MAX_IMAGES_PER_REQUEST = 16
MAX_SIDE = 4096
MAX_SEED = 2**63 - 1
