"""`make demo`: start the API and a worker on embedded defaults, submit a prompt over HTTP, save the PNG."""

import base64
import os
import subprocess
import sys
import time

import requests

from diffusion_api.processes import ROOT, start_api, start_worker, stop, wait_healthy

PORT = int(os.environ.get("DEMO_PORT", "8000"))
BASE = f"http://127.0.0.1:{PORT}"
PROMPT = "a small red circle in the top left on a white background"


def main() -> int:
    logs = ROOT / "var" / "log"
    api = start_api(PORT, log=logs / "demo-api.log")
    worker = start_worker(log=logs / "demo-worker.log")
    try:
        print(f"starting the API on {BASE} and one worker (logs in {logs}) …")
        wait_healthy(BASE)
        token = subprocess.run(
            [sys.executable, "manage.py", "issue_token", "demo"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip()
        headers = {"Authorization": f"Token {token}"}
        response = requests.post(
            f"{BASE}/api/v1/jobs/", json={"prompt": PROMPT, "seed": 42}, headers=headers, timeout=30
        )
        response.raise_for_status()
        job = response.json()
        print(f"POST /api/v1/jobs/ → {response.status_code}, job {job['id']} ({job['status']})")
        while job["status"] in ("queued", "running"):
            time.sleep(0.5)
            job = requests.get(job["url"], headers=headers, timeout=30).json()
            print(f"  {job['status']:9} step {job['progress']['step']}/{job['progress']['total']}", end="\r")
        print()
        if job["status"] != "succeeded":
            print(f"job ended {job['status']}: {job['error']}")
            return 1
        out = ROOT / "out"
        out.mkdir(exist_ok=True)
        for image in job["images"]:
            path = out / f"{job['id']}-{image['index']}.png"
            path.write_bytes(base64.b64decode(image["png_base64"]))
            print(f"saved {path.relative_to(ROOT)} ({image['width']}×{image['height']}, seed {image['seed']})")
        return 0
    finally:
        stop(api, worker)


if __name__ == "__main__":
    sys.exit(main())
