"""``python -m worker --device cpu|cuda:N --model PATH [--quantization fp8]``: load the pipeline once, then serve.

``--model simulated`` serves the simulated model (no torch, no weights; ``model.simulated``), with
``BITDANCE_SIMULATED_SLOTS`` requests at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError

from core.logconfig import configure_logging
from core.redis_options import redis_client_options
from core.requests.worker_store import WorkerRequestStore
from core.settings import Settings, is_simulated_model
from core.storage import LocalStorage
from core.webhooks.outbox import build_outbox
from model.interface import Pipeline
from model.safety import build_safety_checker
from worker.batching import BatchMemory
from worker.gpu_worker import GpuWorker
from worker.names import default_worker_name
from worker.slots import SlotPool
from worker.tasks import TaskRunner, WorkerServices

logger = logging.getLogger("worker")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("device", "model_path", "quantization", "redis_url", "storage_dir", "worker_name", "log_level")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--device", help="cpu or cuda:N (one worker per GPU)")
    parser.add_argument("--model", dest="model_path", type=Path, help="checkpoint directory, or: simulated")
    parser.add_argument(
        "--quantization",
        choices=("none", "fp8"),
        help="fp8: LLM and head linear weights in fp8 (BITDANCE_QUANTIZATION)",
    )
    parser.add_argument("--redis-url")
    parser.add_argument("--storage-dir", type=Path)
    parser.add_argument("--name", dest="worker_name")
    parser.add_argument("--log-level")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings(**cli_overrides(args))
    except ValidationError as exc:  # a bad BITDANCE_* value: say which and what it was, no traceback
        for error in exc.errors():
            name = "BITDANCE_" + "_".join(map(str, error["loc"])).upper()
            print(f"error: {name}={error.get('input')!r}: {error['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.model_path is None:
        logger.error("no checkpoint: pass --model PATH (or simulated) or set BITDANCE_MODEL_PATH")
        return 2
    if is_simulated_model(settings.model_path):
        simulated = load_simulated_pipeline(settings)
        return serve(settings, simulated, "simulated", slots=settings.simulated_slots, burst=args.burst)
    import torch

    from model.checkpoint.memory_plan import BatchMemoryLimit, check_device_memory  # heavy (torch)
    from model.checkpoint.verification import verify_checkpoint
    from model.pipeline import BitDancePipeline

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)

    report = verify_checkpoint(settings.model_path)  # reads the configs: planned and loaded from them below
    if not report.sound or report.configs is None:
        for problem in report.problems:
            logger.error("%s", problem)
        logger.error(
            "refusing to start: %d problem(s) in the checkpoint %s (python -m model.verify PATH lists them)",
            len(report.problems),
            settings.model_path,
        )
        return 3
    quantization = None if settings.quantization == "none" else settings.quantization
    refusal = check_device_memory(report.configs, settings.device, settings.max_batch_images, quantization)
    if refusal is not None:  # refuse now rather than run out of memory in the middle of a request
        logger.error("%s", refusal)
        return 3

    weights = f", {quantization} weights" if quantization else ""
    logger.info("loading %s (%s layout) on %s%s", settings.model_path, report.layout, settings.device, weights)
    pipe = BitDancePipeline.from_configs(report.configs, device=settings.device, quantization=quantization)
    if pipe.load_stats is not None:
        stats = pipe.load_stats
        logger.info(
            "loaded %.2f GB of weights in %.1f s (%.2f GB/s)",
            stats.bytes_loaded / 1e9,
            stats.seconds,
            stats.bytes_loaded / 1e9 / max(stats.seconds, 1e-9),
        )
    memory = BatchMemoryLimit.for_worker(
        report.configs, settings.device, settings.max_batch_images, pipe.prompts.prompt_tokens
    )
    return serve(settings, pipe, settings.device, burst=args.burst, batch_memory=memory)


def load_simulated_pipeline(settings: Settings) -> Pipeline:
    """The simulated model (``model.simulated``): no torch, no weights."""
    from model.simulated.simulated_pipeline import SimulatedPipeline

    simulated = SimulatedPipeline.from_settings(
        settings.simulated_profile, settings.simulated_speed, settings.simulated_failure_rate
    )
    logger.info("model: %s, %d slot(s)", simulated.describe(), settings.simulated_slots)
    return simulated


# Connections a worker process may need beside those of its slots and clients: its background threads
# (heartbeat, sweep, webhook dispatcher, the queue wake-up's subscription) and a margin.
BACKGROUND_CONNECTIONS = 16
# Connections each slot may hold at once in one pool: RQ's worker loop can hold a second one while a
# pipeline is open (a burst on 320 slots found the pool of ``slots + 16`` full and lost 215 slots).
CONNECTIONS_PER_SLOT = 2
# How long a thread waits for a pooled connection when all are in use, before the command fails.
POOL_WAIT_S = 30.0


def worker_redis_clients(settings: Settings, slots: int = 1) -> tuple[redis.Redis, redis.Redis]:
    """The store's client (decoded replies) and RQ's (bytes), each pooled for ``slots`` threads at once.

    redis-py's default pool refuses a connection past ``max_connections`` with ``MaxConnectionsError``, and
    a slot whose command is refused stops: a 300-slot worker lost the slots whose first command found the
    pool full. These pools are sized for every slot and block (up to ``POOL_WAIT_S``) when full instead."""
    size = CONNECTIONS_PER_SLOT * slots + BACKGROUND_CONNECTIONS
    options = redis_client_options()
    pools = [
        redis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=size, timeout=POOL_WAIT_S, decode_responses=decode, **options
        )
        for decode in (True, False)
    ]
    store_client, connection = (redis.Redis(connection_pool=pool, **options) for pool in pools)
    return store_client, connection


def serve(
    settings: Settings,
    pipe: Pipeline,
    device: str,
    slots: int = 1,
    burst: bool = False,
    batch_memory: BatchMemory | None = None,
) -> int:
    """Serve the queues with the loaded pipeline: one RQ worker, or a pool of ``slots`` (the simulated
    model's, whose "GPU time" is a wait). ``batch_memory`` bounds what one batch may need (a real model's)."""
    name = settings.worker_name or default_worker_name(device)
    store_client, connection = worker_redis_clients(settings, slots)
    store = WorkerRequestStore(store_client, settings)
    services = WorkerServices(
        settings=settings,
        pipe=pipe,
        request_store=store,
        storage=LocalStorage(settings.storage_dir, settings.default_file_ttl_s),
        safety=build_safety_checker(
            settings.safety_checker,
            simulated=pipe.identity.simulated,
            threshold=settings.nsfw_threshold,
            weights=settings.safety_checker_path,
            device=settings.device,
        ),
        worker_name=name,
        batch_memory=batch_memory,
    )
    model = pipe.identity
    info = {"device": settings.device, "model": model.as_dict()}  # published with each heartbeat
    queues = [settings.queue_normal, settings.queue_low]
    outbox = build_outbox(store_client, settings)
    if slots > 1:
        pool = SlotPool(services, store, outbox, queues, slots, connection, info)
        logger.info("worker %s ready (%d slots)", name, slots)
        pool.work(logging_level=settings.log_level.upper())
        return 0
    runner = TaskRunner(services)
    worker = GpuWorker(queues, runner=runner, store=store, outbox=outbox, info=info, name=name, connection=connection)
    logger.info("worker %s ready: %s", name, model.summary())
    worker.work(burst=burst, logging_level=settings.log_level.upper())
    return 0


if __name__ == "__main__":
    sys.exit(main())
