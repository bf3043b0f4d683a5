"""How uvicorn runs the API: ``DrainingServer`` (drains on SIGTERM) and N of them on one socket.

A module of its own (not ``server.__main__``) because ``--workers N`` starts its processes with
multiprocessing's spawn, which imports the function each process runs.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import socket
from types import FrameType

import uvicorn

from server.app import drain_of_environment_app
from server.shutdown import Drain

logger = logging.getLogger("server")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app's ``Drain`` the moment shutdown begins."""

    def __init__(self, config: uvicorn.Config, drain: Drain | None = None) -> None:
        super().__init__(config)
        self.drain = drain  # None in ``--workers N``: each worker process's app has its own

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        freeze_startup_objects()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain = self.drain or drain_of_environment_app()
        if drain is not None:
            if not drain.is_draining:
                logger.info("shutting down: draining for up to %.0fs", drain.grace_s)
            drain.begin()
        super().handle_exit(sig, frame)


def freeze_startup_objects() -> None:
    """Keep what startup built (the app, its routes and models, imported modules: ~80,000 objects) out
    of the garbage collector's full collections. Each one walked them all, stalling every request in
    flight for ~50 ms on the 2-core machine: the tail of issue 9's pollers benchmark. Startup's own
    garbage is collected first, so nothing unreachable is frozen."""
    gc.collect()
    gc.freeze()


def serve_worker(config: uvicorn.Config, sock: socket.socket) -> None:
    """One of ``--workers N``: its own app (``app_from_environment``) on the shared socket, draining on SIGTERM."""
    DrainingServer(config).run(sockets=[sock])


def serve_processes(config: uvicorn.Config, workers: int) -> None:
    """uvicorn's multi-process mode, with our ``DrainingServer`` in every process: the parent binds the
    socket, starts the workers, passes SIGTERM/SIGINT on and waits for them."""
    sock = config.bind_socket()
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=serve_worker, args=(config, sock), name=f"api-{i}") for i in range(workers)]
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
