import logging

from rest_framework.throttling import ScopedRateThrottle

logger = logging.getLogger(__name__)


class FailOpenScopedRateThrottle(ScopedRateThrottle):
    """A scoped throttle that lets requests through when its cache (Redis) is down.

    Throttling protects capacity; refusing every create because the counter store is unreachable would turn a
    broker outage into an API outage, while the job itself can still be stored and published later by the sweeper.
    """

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception:
            logger.warning("throttle cache unavailable; letting the request through", exc_info=True)
            return True
