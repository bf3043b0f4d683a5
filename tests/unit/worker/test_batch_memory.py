"""Issue 19, item 8: a long prompt cannot make its batch companions fail.

A batch's prompts are padded to its longest, so one long prompt sizes every row's KV cache and
prefill. On a real Redis, with ``BatchMemoryLimit`` as ``python -m worker`` builds it for the 14B
64x checkpoint on a GPU with ``BITDANCE_MAX_BATCH_IMAGES=4`` (its memory plan, from the shipped
config files) and prompts counted by the tiny checkpoint's real tokenizer (Qwen's kind, smaller
vocabulary): a long prompt is not claimed into a short request's batch, and a long request that
starts takes no companion the plan has no room for. (The tiny model itself is dominated by its
decoder: there, long prompts cost next to nothing.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.protocol import RequestStatus
from core.settings import Settings
from model.checkpoint.configs import CONFIGS_DIR, read_configs
from model.checkpoint.memory_plan import DEFAULT_PROMPT_TOKENS, BatchMemoryLimit
from model.prompts import PromptEncoder
from worker.tasks import TaskRunner

from .fakes import FakePipeline
from .test_tasks import make_runner, submit

LONG = ("a lighthouse on a cliff above a stormy sea, oil painting, dramatic light " * 130)[:9_500]
SHORT = "a lighthouse"
SQUARE_HD = {"image_size": "square_hd"}  # 1024x1024, the 64x checkpoint's size


@pytest.fixture(scope="module")
def memory(tiny_checkpoint: Path) -> BatchMemoryLimit:
    encoder = PromptEncoder.from_directory(read_configs(tiny_checkpoint).files.tokenizer_dir)
    return BatchMemoryLimit.for_worker(read_configs(CONFIGS_DIR / "bitdance-14b-64x"), "cuda", 4, encoder.prompt_tokens)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(progress_interval_s=0.0, max_batch_images=4)


def runner_with(settings: Settings, memory: BatchMemoryLimit) -> tuple[TaskRunner, FakePipeline]:
    pipe = FakePipeline(steps=1, parallel_num=64)
    runner, _ = make_runner(settings, pipe)
    runner.services.batch_memory = memory
    return runner, pipe


def test_the_plan_has_room_for_short_prompts_only(memory: BatchMemoryLimit) -> None:
    long_tokens, short_tokens = memory.prompt_tokens(LONG), memory.prompt_tokens(SHORT)
    assert short_tokens < DEFAULT_PROMPT_TOKENS < long_tokens
    assert memory.fits(4, True, 1024, 1024, short_tokens)
    assert memory.fits(1, True, 1024, 1024, long_tokens)  # alone, it fits
    assert not memory.fits(2, True, 1024, 1024, long_tokens)  # two images padded to the long prompt: too much


def test_a_long_prompt_is_not_claimed_into_a_short_batch(settings: Settings, memory: BatchMemoryLimit) -> None:
    runner, pipe = runner_with(settings, memory)
    submit(settings, "req-first", prompt=SHORT, **SQUARE_HD)
    submit(settings, "req-long", prompt=LONG, **SQUARE_HD)
    submit(settings, "req-short-1", prompt=SHORT + " at dawn", **SQUARE_HD)
    submit(settings, "req-short-2", prompt=SHORT + " at dusk", **SQUARE_HD)
    assert runner.run("req-first") == "ok"
    assert pipe.batches == [3]  # before: [4], the long prompt padding every row of the batch
    assert LONG not in [call["prompt"] for call in pipe.calls]
    long_record = runner.store.get("req-long")
    assert long_record is not None and long_record.status is RequestStatus.IN_QUEUE  # it runs on its own later
    assert runner.run("req-long") == "ok" and pipe.batches == [3, 1]


def test_a_long_request_takes_no_companion_it_has_no_room_for(settings: Settings, memory: BatchMemoryLimit) -> None:
    runner, pipe = runner_with(settings, memory)
    submit(settings, "req-long-first", prompt=LONG, **SQUARE_HD)
    submit(settings, "req-short", prompt=SHORT, **SQUARE_HD)
    assert runner.run("req-long-first") == "ok"
    assert pipe.batches == [1]
    assert runner.store.get("req-short").status is RequestStatus.IN_QUEUE  # type: ignore[union-attr]


def test_short_prompts_still_batch(settings: Settings, memory: BatchMemoryLimit) -> None:
    runner, pipe = runner_with(settings, memory)
    for index in range(4):
        submit(settings, f"req-{index}", prompt=f"{SHORT} number {index}", **SQUARE_HD)
    assert runner.run("req-0") == "ok"
    assert pipe.batches == [4]
