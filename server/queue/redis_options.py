"""Connection options shared by every Redis client of the API and the workers."""

from __future__ import annotations

from typing import Any

import redis

# Reconnect through a Redis restart instead of failing the first command after it.
REDIS_RETRY_ATTEMPTS = 6


def redis_client_options() -> dict[str, Any]:
    """Connection options shared by every Redis client of the API and the workers."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return {
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRY_ATTEMPTS),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 10,
    }


def async_redis_options() -> dict[str, Any]:
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import ExponentialBackoff

    options = redis_client_options()
    options["retry"] = AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRY_ATTEMPTS)
    return options
