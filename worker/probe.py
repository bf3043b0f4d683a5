"""``python -m worker.probe [--name NAME]``: exit 0 when this worker is up, 1 when it is not.

For container health checks and Kubernetes probes. "Up" means the worker's heartbeat in Redis is
younger than the lease (``BITDANCE_LEASE_TTL_S``): a worker starts heartbeating only once its
model is loaded, and its heartbeat thread stops when the process hangs or dies. Which worker: the
``--name`` given, else ``BITDANCE_WORKER_NAME``, else any worker of this host with a default name
(``worker.names``; a container or pod has a host name of its own).
Reads only Redis: it imports neither torch nor the model, so it answers in well under a second.
"""

from __future__ import annotations

import argparse
import socket
import sys

import redis

from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings
from worker.names import is_default_name_of_host, is_name_or_slot_of

PROBE_TIMEOUT_S = 3.0


def matching(names: list[str], wanted: str | None, host: str) -> list[str]:
    """The heartbeating workers this probe stands for."""
    if wanted:
        return [name for name in names if is_name_or_slot_of(name, wanted)]
    return [name for name in names if is_default_name_of_host(name, host)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.probe", description=__doc__)
    parser.add_argument("--name", help="the worker's name (default: BITDANCE_WORKER_NAME, else this host's workers)")
    args = parser.parse_args(argv)
    settings = Settings()
    wanted = args.name or settings.worker_name
    client = redis.Redis.from_url(  # no retries: a probe answers now, the orchestrator asks again
        settings.redis_url,
        decode_responses=True,
        socket_timeout=PROBE_TIMEOUT_S,
        socket_connect_timeout=PROBE_TIMEOUT_S,
    )
    try:
        names = WorkerRequestStore(client, settings).alive_worker_names()
    except redis.RedisError as exc:
        print(f"not ready: Redis unreachable at {settings.redis_url}: {exc}")
        return 1
    finally:
        client.close()
    alive = matching(names, wanted, socket.gethostname())
    if not alive:
        who = f"worker {wanted!r}" if wanted else f"a worker of host {socket.gethostname()!r}"
        print(f"not ready: no heartbeat from {who} in the last {settings.lease_ttl_s:g}s (loading, hung or stopped)")
        return 1
    print(f"ready: {', '.join(alive)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
