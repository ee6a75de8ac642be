"""The API as deployed: gunicorn runs this under uvicorn workers (processes.start_api, compose, the Dockerfile).

Under ASGI a client that waits (`Prefer: wait`, the OpenAI and A1111 routes) or streams a job's events holds no
thread or process, only a coroutine. Synchronous code (the plain JSON views, the ORM) runs in one thread per process,
one request at a time, as a gunicorn sync worker would run it.
"""

import os

import django
from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.urls import Resolver404, resolve

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "diffusion_api.settings.production")
django.setup(set_prefix=False)

from diffusion_api.jobs.status_reads import status_reads  # noqa: E402 (needs the apps loaded)


class APIHandler(ASGIHandler):
    """Django's ASGI handler, made as cheap as a sync worker for synchronous views.

    Two changes, each measured on the job status route (docs/experiments/benchmarks-history.md, "Status reads
    under ASGI, and event streams"):

    * No thread per request. Django wraps each request in a `ThreadSensitiveContext`, which gives its synchronous code
      a new thread, and with it a new database connection; a hundred clients meant a hundred threads contending for
      the GIL. Without the context, asgiref runs all synchronous code of the process in one long-lived thread, which
      keeps one persistent connection (CONN_MAX_AGE).
    * One hand-over per request. Through the async middleware chain every Django middleware hands each of its hooks
      to that thread and back (about 15 hand-overs a request). A request for a synchronous view instead
      runs the synchronous chain, as WSGI does, in one hand-over. Requests for async views (events, waiting creates,
      the OpenAI and A1111 routes) take the async chain and never occupy the thread while they wait.

    And a job's status read whose job has not changed since Django last answered it is answered again from that
    answer, after one query (jobs.status_reads).
    """

    def __init__(self):
        super().__init__()
        sync_handler = BaseHandler()
        sync_handler.load_middleware(is_async=False)
        self._sync_response = sync_to_async(sync_handler.get_response, thread_sensitive=True)
        self.status_reads = status_reads()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)  # Django refuses it with its own message
        if self.status_reads is not None:
            await self.status_reads(scope, receive, send, self.handle)
        else:
            await self.handle(scope, receive, send)

    async def get_response_async(self, request):
        if _view_is_async(request.path_info):
            return await super().get_response_async(request)
        return await self._sync_response(request)


def _view_is_async(path: str) -> bool:
    try:
        return iscoroutinefunction(resolve(path).func)
    except Resolver404:
        return False  # the synchronous chain answers the 404


application = APIHandler()
