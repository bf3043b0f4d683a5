"""The Locust users: closed-loop (one request at a time, back to back) and open-loop (Poisson arrivals).

Both run ``flows`` with the process's ``LoadState`` (``runner``), which hands out the request
budget, collects the samples and says when to stop starting requests.
"""

from __future__ import annotations

import random
from typing import Any

import gevent
import gevent.ssl
from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest import inputs as inputs_module
from loadtest.flows import FalClientFlow, HttpFlow
from loadtest.state import current_state

IDLE_S = 3600.0  # a user with nothing left to send waits here until the runner stops it


def ssl_context() -> Any:
    """Verified TLS; with ``--ca-file`` / ``SSL_CERT_FILE``, against that CA (e.g. ``make run TLS=1``'s)."""
    ca_file = current_state().config.ca_file
    return gevent.ssl.create_default_context(cafile=ca_file) if ca_file else gevent.ssl.create_default_context()


class EndpointUser(FastHttpUser):
    abstract = True
    insecure = False
    ssl_context_factory = staticmethod(ssl_context)
    network_timeout = 120.0  # between two bytes; the server's status stream sends a keep-alive every 15 s
    connection_timeout = 30.0
    wait_time = constant(0)

    def on_start(self) -> None:
        self.state = current_state()
        config = self.state.config
        self.flow = (
            FalClientFlow(self.client, config) if config.client == "fal-client" else HttpFlow(self.client, config)
        )
        self.inputs = inputs_module.cycle(config.inputs, offset=random.randrange(len(config.inputs)))


class ClosedLoopUser(EndpointUser):
    """One request at a time, the next right after the previous one ends (``--concurrency N`` users).

    Locust starts users in batches (``--spawn-rate`` of them at once, every second); with equal service
    times a batch's requests would then stay in step for the whole run. ``--start-jitter S`` spreads
    each user's first request over S seconds, as independent clients are."""

    def on_start(self) -> None:
        super().on_start()
        jitter_s = self.state.config.start_jitter_s
        if jitter_s > 0:
            gevent.sleep(random.uniform(0.0, jitter_s))

    @task
    def one_request(self) -> None:
        if not self.state.take():
            gevent.sleep(IDLE_S)
            return
        self.state.run_one(self.flow, next(self.inputs))


class OpenLoopUser(EndpointUser):
    """Poisson arrivals at ``rate / users`` per second, each request in its own greenlet (``--rate R``)."""

    concurrency = 100_000  # connections of this user's pool: every arrival may be in flight at once

    @task
    def arrivals(self) -> None:
        rate = self.state.config.rate or 1.0
        per_user = rate / max(self.state.arrival_users, 1)
        while True:
            gevent.sleep(random.expovariate(per_user))
            if not self.state.take():
                break
            gevent.spawn(self.state.run_one, self.flow, next(self.inputs))
        gevent.sleep(IDLE_S)
