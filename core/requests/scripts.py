"""Lua scripts for the request state machine: each transition is one atomic Redis call.

Each script comes with the one function that builds its KEYS/ARGV from named arguments (``*_call``,
returning a ``ScriptCall``) and, when it answers with a word, the ``StrEnum`` of its answers: the
stores turn a reply into that enum with its constructor, so an unknown reply raises instead of being
compared as a string. ``core.requests.api_store``, ``core.requests.worker_store`` and
``core.webhooks.outbox`` are the only callers. The RQ job id of a request is the request id; the
scripts that requeue or cancel reach RQ's queue lists and job hashes by RQ's own key names
(``core.requests.rq_integration``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from typing import NamedTuple

from core.errors import RequestTimeoutError, RunnerDisconnectedError
from core.requests.records import Keys, cancelled_error
from core.requests.rq_integration import JOB_KEY_PREFIX, QUEUE_KEY_PREFIX, job_key


class ScriptCall(NamedTuple):
    """The KEYS and ARGV of one script call (``script(keys=call.keys, args=call.args)``)."""

    keys: list[str]
    args: Sequence[str | int | bytes]


def _time(seconds: float) -> str:
    """A timestamp as the scripts get it (exact: ``repr``)."""
    return repr(seconds)


def _schedule_webhook(key_index: int) -> str:
    """Lua: when the (just completed) record has a webhook, put it in the outbox ``KEYS[key_index]``,
    due now (``ARGV[2]``), in the same atomic step as the completion."""
    return f"""
local hook = redis.call('HGET', KEYS[1], 'webhook')
if hook and hook ~= '' then
  redis.call('ZADD', KEYS[{key_index}], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'webhook_status', 'pending')
end
"""


# A batch of commands run as one atomic step with one reply (their replies, in order): a submit's
# writes, ours and those RQ records for its enqueue. MULTI/EXEC does the same with a reply per
# command, whose parsing was the largest part of a submit's time in the API (issue 9).
# KEYS: every key the commands touch (declared, as Redis asks of scripts)
# ARGV: the commands, each as its argument count followed by its arguments (name first); a command
# led by WITH_PREVIOUS_REPLY gets the previous command's reply as its last argument (a submit's ticket).
WITH_PREVIOUS_REPLY = "WITH-PREVIOUS-REPLY"


def _apply_commands(first_arg: int) -> str:
    """Lua: run the commands encoded in ARGV from ``ARGV[first_arg]`` on (each as its argument count,
    then its arguments; one led by WITH_PREVIOUS_REPLY gets the previous reply as its last argument),
    their replies in ``replies``."""
    return f"""
local a, replies = {first_arg}, {{}}
while a <= #ARGV do
  local argc = tonumber(ARGV[a])
  if ARGV[a + 1] == '{WITH_PREVIOUS_REPLY}' then
    local command = {{unpack(ARGV, a + 2, a + argc)}}
    command[#command + 1] = replies[#replies]
    replies[#replies + 1] = redis.call(unpack(command))
  else
    replies[#replies + 1] = redis.call(unpack(ARGV, a + 1, a + argc))
  end
  a = a + 1 + argc
end
"""


APPLY_BATCH = _apply_commands(1) + "return replies\n"


def apply_batch_call(commands: Sequence[Sequence[str | int | float | bytes]], keys: Sequence[str]) -> ScriptCall:
    """KEYS: ``keys``   ARGV: each command's argument count, then its arguments (name first; a float
    as redis-py sends it, ``repr``; bytes, such as RQ's pickled job data, as they are)."""
    args: list[str | int | bytes] = []
    for command in commands:
        if not command:
            raise ValueError("an empty command")
        args.append(len(command))
        args.extend(repr(a) if isinstance(a, float) else a for a in command)
    return ScriptCall(list(keys), args)


# A submit: APPLY_BATCH's commands, run only if the queue and the key have room, in the same atomic
# step (a bound read before the write lets concurrent submits all pass it). Answers the batch's
# replies, or 'queue_full' / 'key_full' with nothing written; 'store_full' once Redis holds
# SUBMIT_MEMORY_SHARE of its maxmemory: the rest is the workers' room to start, log, renew leases and
# complete what was accepted (at maxmemory, noeviction refuses every write, theirs too).
# KEYS: queued (every waiting request), the owner's queued set, then every key the commands touch
# ARGV: queue limit (-1: none), per-key limit (0: none), request id, record key prefix, then the
#       commands as APPLY_BATCH takes them
SUBMIT_MEMORY_SHARE = 0.9
SUBMIT = (
    f"""
local memory = redis.call('INFO', 'memory')
local most = tonumber(string.match(memory, 'maxmemory:(%d+)'))
if most and most > 0 and tonumber(string.match(memory, 'used_memory:(%d+)')) >= most * {SUBMIT_MEMORY_SHARE} then
  return 'store_full'
end
local limit, per_key = tonumber(ARGV[1]), tonumber(ARGV[2])
if limit >= 0 and redis.call('SCARD', KEYS[1]) >= limit then return 'queue_full' end
if per_key > 0 and redis.call('SCARD', KEYS[2]) >= per_key then
  for _, rid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if redis.call('HGET', ARGV[4] .. rid, 'status') ~= 'IN_QUEUE' then redis.call('SREM', KEYS[2], rid) end
  end
  if redis.call('SCARD', KEYS[2]) >= per_key then return 'key_full' end
end
"""
    + _apply_commands(5)
    + """
if per_key > 0 then redis.call('SADD', KEYS[2], ARGV[3]) end
return replies
"""
)


class SubmitRefusal(StrEnum):
    """SUBMIT's answer when it wrote nothing."""

    QUEUE_FULL = "queue_full"
    KEY_FULL = "key_full"
    STORE_FULL = "store_full"  # Redis near its maxmemory


def submit_call(
    keys: Keys,
    commands: Sequence[Sequence[str | int | float | bytes]],
    *,
    touched: Sequence[str],
    owner: str,
    request_id: str,
    max_queue_length: int | None,
    max_queued_per_key: int,
) -> ScriptCall:
    """KEYS: queued, owner_queued, touched...   ARGV: limit, per_key, rid, record prefix, commands..."""
    batch = apply_batch_call(commands, keys=touched)
    limit = -1 if max_queue_length is None else max_queue_length
    head: list[str | int | bytes] = [limit, max_queued_per_key, request_id, keys.record("")]
    return ScriptCall([keys.queued, keys.owner_queued(owner), *batch.keys], [*head, *batch.args])


# Take the first request id off the first non-empty RQ list (in serving order) and note it in the
# dequeued index, in one step: a worker that dies before START leaves it there for the sweep.
DEQUEUE = """
for i = 2, #KEYS do
  local rid = redis.call('LPOP', KEYS[i])
  if rid then
    redis.call('ZADD', KEYS[1], ARGV[1], rid)
    return {KEYS[i], rid}
  end
end
return false
"""


def dequeue_call(keys: Keys, *, queue_lists: Sequence[str], now: float) -> ScriptCall:
    """KEYS: dequeued, rq_list...   ARGV: now"""
    return ScriptCall([keys.dequeued, *queue_lists], [_time(now)])


# Per-key concurrency (BITDANCE_MAX_RUNNING_PER_KEY), beside START rather than in it. A request a
# worker just took (DEQUEUE), or wants as a batch companion, is admitted when its key runs fewer than
# the limit: it is counted in the key's running set at once, so two workers cannot both admit past
# it. Otherwise a taken request (mode 'defer') leaves the dequeued index for the key's deferred list,
# still IN_QUEUE, until RELEASE_DEFERRED puts it back at the front of its queue; a companion (mode
# 'check') is left where it is. The running set is pruned of ids that are neither running nor queued
# (ended, expired): a requeued request keeps its place in it and is admitted again when taken.
# The key's running set is ``<prefix>:owner:<owner_tag>:running``, its deferred list ``Keys.owner_deferred``.
# KEYS: rec, dequeued, deferred_owners   ARGV: rid, owner prefix, limit, mode
_PRUNE_RUNNING = """
local function prune(running)
  for _, id in ipairs(redis.call('SMEMBERS', running)) do
    local st = redis.call('HGET', ARGV[2] .. 'req:' .. id, 'status')
    if st ~= 'IN_PROGRESS' and st ~= 'IN_QUEUE' then redis.call('SREM', running, id) end
  end
end
"""
ADMIT = (
    _PRUNE_RUNNING
    + """
local owner = redis.call('HGET', KEYS[1], 'owner')
if (not owner) or redis.call('HGET', KEYS[1], 'status') ~= 'IN_QUEUE' then return 'admitted' end
local tag = redis.sha1hex(owner)
local running = ARGV[2] .. 'owner:' .. tag .. ':running'
if redis.call('SISMEMBER', running, ARGV[1]) == 1 then return 'admitted' end
local limit = tonumber(ARGV[3])
if redis.call('SCARD', running) >= limit then prune(running) end
if redis.call('SCARD', running) < limit then
  redis.call('SADD', running, ARGV[1])
  return 'admitted'
end
if ARGV[4] ~= 'defer' then return 'full' end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', ARGV[2] .. 'owner:' .. tag .. ':deferred', ARGV[1])
redis.call('SADD', KEYS[3], tag)
return 'deferred'
"""
)


class AdmitOutcome(StrEnum):
    """ADMIT's answer."""

    ADMITTED = "admitted"  # under its key's limit (now counted), or not queued (START decides)
    DEFERRED = "deferred"  # waits in its key's deferred list (mode 'defer')
    FULL = "full"  # its key is at its limit (mode 'check'): left in its queue


def admit_call(keys: Keys, *, request_id: str, limit: int, defer: bool) -> ScriptCall:
    """KEYS: rec, dequeued, deferred_owners   ARGV: rid, prefix + ':', limit, mode"""
    mode = "defer" if defer else "check"
    return ScriptCall(
        [keys.record(request_id), keys.dequeued, keys.deferred_owners],
        [request_id, f"{keys.prefix}:", limit, mode],
    )


# Put back at the front of their queues (in the order they were deferred) as many of a key's deferred
# requests as it has room to run; those no longer queued are dropped. Answers how many were put back.
# KEYS: deferred_owners, queue_grew channel, queued   ARGV: owner tag, prefix + ':', limit
RELEASE_DEFERRED = (
    _PRUNE_RUNNING
    + f"""
local tag = ARGV[1]
local running = ARGV[2] .. 'owner:' .. tag .. ':running'
local deferred = ARGV[2] .. 'owner:' .. tag .. ':deferred'
prune(running)
local room = tonumber(ARGV[3]) - redis.call('SCARD', running)
local back = {{}}
while room > #back do
  local id = redis.call('LPOP', deferred)
  if not id then break end
  local queue = redis.call('HGET', ARGV[2] .. 'req:' .. id, 'queue')
  if queue and redis.call('HGET', ARGV[2] .. 'req:' .. id, 'status') == 'IN_QUEUE' then
    back[#back + 1] = {{id, queue}}
  end
end
for i = #back, 1, -1 do
  redis.call('LPUSH', '{QUEUE_KEY_PREFIX}' .. back[i][2], back[i][1])
  redis.call('PUBLISH', KEYS[2], back[i][2])
end
if #back > 0 then redis.call('PUBLISH', KEYS[3] .. ':moved', back[1][1]) end
if redis.call('LLEN', deferred) == 0 then redis.call('SREM', KEYS[1], tag) end
return #back
"""
)


def release_deferred_call(keys: Keys, *, tag: str, limit: int) -> ScriptCall:
    """KEYS: deferred_owners, queue_grew, queued   ARGV: owner tag, prefix + ':', limit"""
    return ScriptCall([keys.deferred_owners, keys.queue_grew, keys.queued], [tag, f"{keys.prefix}:", limit])


# Start a request its worker took (DEQUEUE): IN_PROGRESS and leased to that worker, unless it is gone,
# completed (cancelled, expired), leased to another worker or past its start deadline.
START = """
redis.call('ZREM', KEYS[5], ARGV[1])
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st == 'COMPLETED' then return 'completed' end
if st == 'IN_PROGRESS' and redis.call('EXISTS', KEYS[2]) == 1 then return 'leased' end
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if deadline and deadline ~= '' and tonumber(ARGV[3]) > tonumber(deadline) then return 'overdue' end
redis.call('HSET', KEYS[1], 'status', 'IN_PROGRESS', 'started_at', ARGV[3], 'worker', ARGV[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
redis.call('HSET', KEYS[1], 'attempt_token', ARGV[5])
redis.call('PUBLISH', KEYS[1] .. ':changed', 'started')
redis.call('PUBLISH', KEYS[3] .. ':moved', ARGV[1])
return 'started'
"""


class StartOutcome(StrEnum):
    """START's answer: started, or why not."""

    STARTED = "started"
    MISSING = "missing"
    COMPLETED = "completed"  # cancelled or expired before it started
    LEASED = "leased"  # another worker runs it
    OVERDUE = "overdue"  # its start deadline passed


def start_call(
    keys: Keys, *, request_id: str, worker: str, now: float, lease_ms: int, attempt: str | None = None
) -> ScriptCall:
    """KEYS: rec, lease, queued, active, dequeued   ARGV: rid, worker, now, lease_ms, attempt

    ``attempt`` (default: the worker's name) is this run's token: the lease holds it and the record
    keeps it as ``attempt_token``, so that only this run may renew the lease and complete the request."""
    rid = request_id
    return ScriptCall(
        [keys.record(rid), keys.lease(rid), keys.queued, keys.active, keys.dequeued],
        [rid, worker, _time(now), lease_ms, attempt or worker],
    )


COMPLETE = (
    """
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'COMPLETED' then return 0 end
if ARGV[8] ~= '' and (st ~= 'IN_PROGRESS' or redis.call('HGET', KEYS[1], 'attempt_token') ~= ARGV[8]) then return -1 end
redis.call('HSET', KEYS[1], 'status', 'COMPLETED', 'completed_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'inference_time', ARGV[5]) end
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('HINCRBY', KEYS[6], 'completed:' .. ARGV[7], 1)
redis.call('PUBLISH', KEYS[1] .. ':changed', 'completed')
"""
    + _schedule_webhook(7)
    + """
return 1
"""
)


def _running_keys(keys: Keys, rid: str) -> list[str]:
    """KEYS of the scripts that end a running request (COMPLETE, RECOVER_ORPHAN)."""
    return [keys.record(rid), keys.logs(rid), keys.lease(rid), keys.queued, keys.active, keys.stats, keys.webhooks]


def complete_call(
    keys: Keys,
    *,
    request_id: str,
    now: float,
    result_json: str,
    error_json: str,
    inference_time: float | None,
    ttl_s: int,
    outcome: str,
    attempt: str | None = None,
) -> ScriptCall:
    """KEYS: rec, logs, lease, queued, active, stats, webhooks
    ARGV: rid, now, result_json, error_json, inference_time, ttl_s, outcome (the stats counter's name), attempt

    COMPLETE answers 1 when it completed the request, 0 when it was gone or already COMPLETED, -1 when
    ``attempt`` is given and is not the run that holds the request (a stalled worker's, requeued since)."""
    timing = repr(inference_time) if inference_time is not None else ""
    args: list[str | int] = [request_id, _time(now), result_json, error_json, timing, ttl_s, outcome, attempt or ""]
    return ScriptCall(_running_keys(keys, request_id), args)


# Cancel (mode 'cancel') or expire a queued request past its start deadline (mode 'expire').
CANCEL_QUEUED = (
    f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st == 'COMPLETED' then return 'completed' end
if st == 'IN_PROGRESS' then
  if ARGV[5] == 'cancel' then redis.call('HSET', KEYS[1], 'cancel', '1') end
  return 'requested'
end
if ARGV[5] == 'expire' then
  local deadline = redis.call('HGET', KEYS[1], 'deadline')
  if (not deadline) or deadline == '' or tonumber(ARGV[2]) <= tonumber(deadline) then return 'pending' end
end
local queue = redis.call('HGET', KEYS[1], 'queue')
redis.call('LREM', '{QUEUE_KEY_PREFIX}' .. queue, 0, ARGV[1])
redis.call('DEL', '{JOB_KEY_PREFIX}' .. ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'COMPLETED', 'completed_at', ARGV[2], 'error', ARGV[3])
if ARGV[5] == 'cancel' then redis.call('HSET', KEYS[1], 'cancel', '1') end
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('HINCRBY', KEYS[4], 'completed:' .. ARGV[6], 1)
redis.call('PUBLISH', KEYS[1] .. ':changed', 'completed')
redis.call('PUBLISH', KEYS[3] .. ':moved', ARGV[1])
"""
    + _schedule_webhook(5)
    + """
return 'cancelled'
"""
)


class CancelMode(StrEnum):
    """What CANCEL_QUEUED does to a queued request: a client's cancel, or the end of its start deadline."""

    CANCEL = "cancel"
    EXPIRE = "expire"


class CancelOutcome(StrEnum):
    """CANCEL_QUEUED's answer."""

    CANCELLED = "cancelled"  # was queued, now COMPLETED (cancelled or expired)
    REQUESTED = "requested"  # running: its worker stops at the next patch (mode cancel)
    PENDING = "pending"  # queued and its start deadline has not passed (mode expire)
    COMPLETED = "completed"  # already COMPLETED
    MISSING = "missing"


def cancel_queued_call(keys: Keys, *, request_id: str, mode: CancelMode, now: float, ttl_s: int) -> ScriptCall:
    """KEYS: rec, logs, queued, stats, webhooks   ARGV: rid, now, error_json, ttl_s, mode, outcome

    The stored error and the stats counter follow the mode: 499 client_cancelled, 504 request_timeout."""
    if mode is CancelMode.CANCEL:
        error, outcome = cancelled_error(), "client_cancelled"
    else:
        error, outcome = json.dumps(RequestTimeoutError().to_stored().to_dict()), "request_timeout"
    rid = request_id
    return ScriptCall(
        [keys.record(rid), keys.logs(rid), keys.queued, keys.stats, keys.webhooks],
        [rid, _time(now), error, ttl_s, mode.value, outcome],
    )


# A request left IN_PROGRESS by a worker whose lease expired: requeue at the front once, else fail.
RECOVER_ORPHAN = (
    """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'IN_PROGRESS' then
  if st ~= 'IN_QUEUE' then redis.call('SREM', KEYS[5], ARGV[1]) end
  return 'skip'
end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'alive' end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
local outcome = nil
local err = nil
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  outcome = 'client_cancelled'; err = ARGV[5]
elseif attempts >= tonumber(ARGV[3]) then
  outcome = 'runner_disconnected'; err = ARGV[4]
end
redis.call('SREM', KEYS[5], ARGV[1])
if outcome then
  redis.call('HSET', KEYS[1], 'status', 'COMPLETED', 'completed_at', ARGV[2], 'error', err)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('HINCRBY', KEYS[6], 'completed:' .. outcome, 1)
  redis.call('PUBLISH', KEYS[1] .. ':changed', 'completed')
"""
    + _schedule_webhook(7)
    + f"""
  return outcome
end
redis.call('HSET', KEYS[1], 'status', 'IN_QUEUE', 'attempts', attempts + 1)
redis.call('HDEL', KEYS[1], 'started_at', 'worker')
redis.call('HDEL', KEYS[1], 'attempt_token')
redis.call('SADD', KEYS[4], ARGV[1])
local queue = redis.call('HGET', KEYS[1], 'queue')
redis.call('LPUSH', '{QUEUE_KEY_PREFIX}' .. queue, ARGV[1])
redis.call('PUBLISH', KEYS[1] .. ':changed', 'requeued')
redis.call('PUBLISH', KEYS[4] .. ':moved', ARGV[1])
return 'requeued'
"""
)


class RecoverOutcome(StrEnum):
    """The answers of the recovery scripts (RECOVER_DEQUEUED: ``REQUEUED`` or ``SKIP`` only)."""

    REQUEUED = "requeued"  # back at the front of its queue
    CLIENT_CANCELLED = "client_cancelled"  # its cancel was asked for: COMPLETED as cancelled
    RUNNER_DISCONNECTED = "runner_disconnected"  # requeued too often already: COMPLETED with 503
    ALIVE = "alive"  # its worker's lease still holds
    SKIP = "skip"  # not in the state the script recovers (any more)


def recover_orphan_call(keys: Keys, *, request_id: str, now: float, max_requeues: int, ttl_s: int) -> ScriptCall:
    """KEYS: rec, logs, lease, queued, active, stats, webhooks
    ARGV: rid, now, max_requeues, failed_error_json, cancelled_error_json, ttl_s"""
    failed = json.dumps(RunnerDisconnectedError().to_stored().to_dict())
    args: list[str | int] = [request_id, _time(now), max_requeues, failed, cancelled_error(), ttl_s]
    return ScriptCall(_running_keys(keys, request_id), args)


# A request a worker took off its RQ list (DEQUEUE) longer ago than the grace period and never
# started (the worker died in between): back to the front of its list if it is still queued.
RECOVER_DEQUEUED = f"""
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'status') ~= 'IN_QUEUE' then return 'skip' end
local queue = redis.call('HGET', KEYS[1], 'queue')
redis.call('LPUSH', '{QUEUE_KEY_PREFIX}' .. queue, ARGV[1])
redis.call('PUBLISH', KEYS[3] .. ':moved', ARGV[1])
return 'requeued'
"""


def recover_dequeued_call(keys: Keys, *, request_id: str) -> ScriptCall:
    """KEYS: rec, dequeued, queued   ARGV: rid"""
    return ScriptCall([keys.record(request_id), keys.dequeued, keys.queued], [request_id])


# Claim a queued request into a batch that a worker is starting: START's writes, plus taking the
# request's id out of its RQ list (no other worker will pop it). Its RQ job hash is kept, with a TTL,
# so that a requeue after this worker dies still finds it. Only IN_QUEUE requests still in their
# list are claimed; anything else is left to the normal path.
CLAIM = """
if redis.call('HGET', KEYS[1], 'status') ~= 'IN_QUEUE' then return 'not_queued' end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 'not_queued' end
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if deadline and deadline ~= '' and tonumber(ARGV[3]) > tonumber(deadline) then return 'overdue' end
if redis.call('LREM', KEYS[5], 1, ARGV[1]) == 0 then return 'not_queued' end
redis.call('HSET', KEYS[1], 'status', 'IN_PROGRESS', 'started_at', ARGV[3], 'worker', ARGV[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[4])
redis.call('HSET', KEYS[1], 'attempt_token', ARGV[6])
redis.call('EXPIRE', KEYS[6], ARGV[5])
redis.call('PUBLISH', KEYS[1] .. ':changed', 'started')
redis.call('PUBLISH', KEYS[3] .. ':moved', ARGV[1])
return 'started'
"""


class ClaimOutcome(StrEnum):
    """CLAIM's answer."""

    STARTED = "started"  # now IN_PROGRESS, leased to this worker, out of its RQ list
    NOT_QUEUED = "not_queued"  # not queued (any more), cancel asked for, or not in this list
    OVERDUE = "overdue"  # its start deadline passed (left for the normal path to expire)


def claim_call(
    keys: Keys,
    *,
    request_id: str,
    worker: str,
    queue: str,
    now: float,
    lease_ms: int,
    job_ttl_s: int,
    attempt: str | None = None,
) -> ScriptCall:
    """KEYS: rec, lease, queued, active, rq_list, rq_job   ARGV: rid, worker, now, lease_ms, job_ttl_s, attempt
    (``attempt`` as for START)"""
    rid = request_id
    return ScriptCall(
        [keys.record(rid), keys.lease(rid), keys.queued, keys.active, Keys.rq_queue(queue), job_key(rid)],
        [rid, worker, _time(now), lease_ms, job_ttl_s, attempt or worker],
    )


# Renew the lease of a running request for the run that holds it (its attempt token, ARGV[1]): extend
# it while it holds that token; set it again only when it ran out and the record is still IN_PROGRESS
# under that attempt (no sweep requeued it yet). Never takes a lease another run holds, nor one of a
# request requeued or completed since. Answers 1 when renewed, 0 when the run lost the request.
REFRESH_LEASE = """
local held = redis.call('GET', KEYS[2])
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
if held then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'IN_PROGRESS' then return 0 end
if redis.call('HGET', KEYS[1], 'attempt_token') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""


def refresh_lease_call(keys: Keys, *, request_id: str, attempt: str, lease_ms: int) -> ScriptCall:
    """KEYS: rec, lease   ARGV: attempt, lease_ms"""
    return ScriptCall([keys.record(request_id), keys.lease(request_id)], [attempt, lease_ms])


# Take a due webhook for one delivery attempt: push its due time out by the lease, so that no other
# dispatcher sends it meanwhile and a dispatcher that dies mid-attempt leaves it due again later.
# Answers 1 when taken, 0 when it is not due (any more).
LEASE_WEBHOOK = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not due) or tonumber(due) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


def lease_webhook_call(keys: Keys, *, request_id: str, now: float, lease_until: float) -> ScriptCall:
    """KEYS: webhooks   ARGV: rid, now, lease_until"""
    return ScriptCall([keys.webhooks], [request_id, _time(now), _time(lease_until)])


# What a status call shows, in one read: the record's fields, the queue position while queued
# (requests ahead of it: the normal queue is served before the low one; 0 when it is not in its
# list any more, e.g. taken by a worker that has not started it yet), and the logs from ARGV[2];
# false for an unknown request. The position is O(1) in the queue's length: 0 for its list's head,
# else 1 + its ticket minus the ticket of the list's second (``queue_position_from_tickets``); LPOS
# only for a record without a ticket (or behind one).
STATUS_VIEW = f"""
local fields = redis.call('HMGET', KEYS[1], 'status', 'owner', 'endpoint', 'queue', 'deadline', 'error',
  'inference_time', 'ticket')
if not fields[1] then return false end
local position = -1
if fields[1] == 'IN_QUEUE' then
  local qkey = '{QUEUE_KEY_PREFIX}' .. fields[4]
  local head = fields[8] and redis.call('LINDEX', qkey, 0)
  local second = head and head ~= ARGV[1] and redis.call('LINDEX', qkey, 1)
  local base = second and redis.call('HGET', ARGV[3] .. second, 'ticket')
  local found
  if head and head == ARGV[1] then
    found = 0
  elseif base then
    found = math.max(0, math.min(tonumber(fields[8]) - tonumber(base) + 1, redis.call('LLEN', qkey) - 1))
  else
    found = redis.call('LPOS', qkey, ARGV[1])  -- no ticket, or at most one entry: O(1) then
  end
  if not found then
    position = 0
  elseif qkey ~= KEYS[3] then
    position = found + redis.call('LLEN', KEYS[3])
  else
    position = found
  end
end
local logs = {{}}
if tonumber(ARGV[2]) >= 0 then logs = redis.call('LRANGE', KEYS[2], ARGV[2], -1) end
return {{fields, position, logs}}
"""


def status_view_call(keys: Keys, *, request_id: str, normal_queue: str, logs_from: int | None) -> ScriptCall:
    """KEYS: rec, logs, normal_queue_list   ARGV: rid, logs_from (-1: no logs), record key prefix"""
    rid = request_id
    logs_arg = -1 if logs_from is None else logs_from
    return ScriptCall([keys.record(rid), keys.logs(rid), Keys.rq_queue(normal_queue)], [rid, logs_arg, keys.record("")])


# Positions without reading the queues (issue 19): per RQ list (KEYS, in serving order), its length,
# its head's id and the ticket of the one after it (false when there is none or it has no ticket). A
# request's position is then 0 for the head, else 1 + its ticket minus that ticket, clamped to the
# list, plus the lengths of the lists served before it. Counting from the second one keeps a request
# put back at the front (recovery; it keeps its older ticket) from shifting the others. Exact while
# requests leave at the head; after a removal from the middle (a cancel, a batch claim) the requests
# behind it count it until it reaches the front (never past the list's end).
QUEUE_HEADS = """
local out = {}
for i = 1, #KEYS do
  local second = redis.call('LINDEX', KEYS[i], 1)
  out[#out + 1] = redis.call('LLEN', KEYS[i])
  out[#out + 1] = redis.call('LINDEX', KEYS[i], 0)
  out[#out + 1] = second and redis.call('HGET', ARGV[1] .. second, 'ticket')
end
return out
"""


def queue_heads_call(keys: Keys, *, queues: Sequence[str]) -> ScriptCall:
    """KEYS: rq_list... (serving order)   ARGV: record key prefix"""
    return ScriptCall([Keys.rq_queue(q) for q in queues], [keys.record("")])


def queue_position_from_tickets(ticket: int, second_ticket: int, length: int) -> int | None:
    """Requests ahead of ``ticket``, not its list's head, in a list of ``length`` whose second entry
    holds ``second_ticket``; None when it is not in the list (ahead of the second one: taken)."""
    if ticket < second_ticket:
        return None
    return min(ticket - second_ticket + 1, length - 1)
