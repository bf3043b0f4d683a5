"""How uvicorn runs the API: ``DrainingServer`` (drains on SIGTERM) and N of them on one socket.

A module of its own (not ``server.__main__``) because ``--workers N`` starts its processes with
multiprocessing's spawn, which imports the function each process runs. Each process is handed the
parent's ``Settings`` itself (pickled by spawn), so it serves exactly the configuration the parent
parsed, command-line flags included, without a round trip through ``os.environ``, and the same uvicorn
options: their HTTP protocol (``server.bounded_protocol``) with its limits, enforced per process.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn

from core.settings import Settings
from server.access_log import configure_api_logging
from server.app import create_app
from server.shutdown import Drain

logger = logging.getLogger("server")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app's ``Drain`` the moment shutdown begins."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        freeze_startup_objects()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.drain.is_draining:
            logger.info("shutting down: draining for up to %.0fs", self.drain.grace_s)
        self.drain.begin()
        super().handle_exit(sig, frame)


def freeze_startup_objects() -> None:
    """Keep what startup built (the app, its routes and models, imported modules: ~80,000 objects) out
    of the garbage collector's full collections. Each one walked them all, stalling every request in
    flight for ~50 ms on the 2-core machine: the tail of issue 9's pollers benchmark. Startup's own
    garbage is collected first, so nothing unreachable is frozen."""
    gc.collect()
    gc.freeze()


def serve_app(settings: Settings, options: dict[str, Any], sockets: list[socket.socket] | None = None) -> None:
    """The API of ``settings`` served by one ``DrainingServer`` (on ``sockets`` when given: the shared
    socket of ``--workers N``)."""
    app = create_app(settings)
    DrainingServer(uvicorn.Config(app, **options), app.state.drain).run(sockets=sockets)


def serve_worker(settings: Settings, options: dict[str, Any], sock: socket.socket) -> None:
    """One of ``--workers N``, in its spawned process: logging as the parent's, then its own app."""
    configure_api_logging(settings.log_level, settings.log_format, settings.log_status_polls)
    serve_app(settings, options, [sock])


def serve_processes(settings: Settings, options: dict[str, Any]) -> None:
    """uvicorn's multi-process mode, with our ``DrainingServer`` in every process: the parent binds the
    socket, starts ``settings.api_workers`` processes, passes SIGTERM/SIGINT on and waits for them."""
    sock = uvicorn.Config("server.app:create_app", **options).bind_socket()  # only binds: each process builds its app
    spawn = multiprocessing.get_context("spawn")
    processes = [
        spawn.Process(target=serve_worker, args=(settings, options, sock), name=f"api-{i}")
        for i in range(settings.api_workers)
    ]
    for process in processes:
        process.start()

    def pass_on(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    for process in processes:
        process.join()
    sock.close()
