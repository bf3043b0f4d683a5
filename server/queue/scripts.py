"""Lua scripts for the request state machine: each transition is one atomic Redis call.

KEYS/ARGV layouts are documented per script; ``server.queue.api_store`` and ``server.queue.worker_store`` are the only
callers. The RQ job id of a request is the request id, and the RQ queue list is ``rq:queue:<queue>``
(RQ's own naming).
"""


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


# Take the first request id off the first non-empty RQ list (in serving order) and note it in the
# dequeued index, in one step: a worker that dies before START leaves it there for the sweep.
# KEYS: dequeued, rq_list...   ARGV: now
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

# KEYS: rec, lease, queued, active, dequeued   ARGV: rid, worker, now, lease_ms
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
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('PUBLISH', KEYS[1] .. ':changed', 'started')
redis.call('PUBLISH', KEYS[3] .. ':moved', ARGV[1])
return 'started'
"""

# KEYS: rec, logs, lease, queued, active, stats, webhooks
# ARGV: rid, now, result_json, error_json, inference_time, ttl_s, outcome
COMPLETE = (
    """
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'COMPLETED' then return 0 end
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

# Cancel (mode 'cancel') or expire a queued request past its start deadline (mode 'expire').
# KEYS: rec, logs, queued, stats, webhooks   ARGV: rid, now, error_json, ttl_s, mode, outcome
CANCEL_QUEUED = (
    """
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
redis.call('LREM', 'rq:queue:' .. queue, 0, ARGV[1])
redis.call('DEL', 'rq:job:' .. ARGV[1])
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

# A request left IN_PROGRESS by a worker whose lease expired: requeue at the front once, else fail.
# KEYS: rec, logs, lease, queued, active, stats, webhooks
# ARGV: rid, now, max_requeues, failed_error_json, cancelled_error_json, ttl_s
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
    + """
  return outcome
end
redis.call('HSET', KEYS[1], 'status', 'IN_QUEUE', 'attempts', attempts + 1)
redis.call('HDEL', KEYS[1], 'started_at', 'worker')
redis.call('SADD', KEYS[4], ARGV[1])
local queue = redis.call('HGET', KEYS[1], 'queue')
redis.call('LPUSH', 'rq:queue:' .. queue, ARGV[1])
redis.call('PUBLISH', KEYS[1] .. ':changed', 'requeued')
redis.call('PUBLISH', KEYS[4] .. ':moved', ARGV[1])
return 'requeued'
"""
)

# A request a worker took off its RQ list (DEQUEUE) longer ago than the grace period and never
# started (the worker died in between): back to the front of its list if it is still queued.
# KEYS: rec, dequeued, queued   ARGV: rid
RECOVER_DEQUEUED = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'status') ~= 'IN_QUEUE' then return 'skip' end
local queue = redis.call('HGET', KEYS[1], 'queue')
redis.call('LPUSH', 'rq:queue:' .. queue, ARGV[1])
redis.call('PUBLISH', KEYS[3] .. ':moved', ARGV[1])
return 'requeued'
"""

# Claim a queued request into a batch that a worker is starting: START's writes, plus taking the
# request's id out of its RQ list (no other worker will pop it). Its RQ job hash is kept, with a TTL,
# so that a requeue after this worker dies still finds it. Only IN_QUEUE requests still in their
# list are claimed; anything else is left to the normal path.
# KEYS: rec, lease, queued, active, rq_list, rq_job   ARGV: rid, worker, now, lease_ms, job_ttl_s
CLAIM = """
if redis.call('HGET', KEYS[1], 'status') ~= 'IN_QUEUE' then return 'not_queued' end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 'not_queued' end
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if deadline and deadline ~= '' and tonumber(ARGV[3]) > tonumber(deadline) then return 'overdue' end
if redis.call('LREM', KEYS[5], 1, ARGV[1]) == 0 then return 'not_queued' end
redis.call('HSET', KEYS[1], 'status', 'IN_PROGRESS', 'started_at', ARGV[3], 'worker', ARGV[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('EXPIRE', KEYS[6], ARGV[5])
redis.call('PUBLISH', KEYS[1] .. ':changed', 'started')
redis.call('PUBLISH', KEYS[3] .. ':moved', ARGV[1])
return 'started'
"""

# Take a due webhook for one delivery attempt: push its due time out by the lease, so that no other
# dispatcher sends it meanwhile and a dispatcher that dies mid-attempt leaves it due again later.
# KEYS: webhooks   ARGV: rid, now, lease_until
LEASE_WEBHOOK = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not due) or tonumber(due) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


# What a status call shows, in one read: the record's fields, the queue position while queued
# (requests ahead of it: the normal queue is served before the low one; 0 when it is not in its
# list any more, e.g. taken by a worker that has not started it yet), and the logs from ARGV[2].
# KEYS: rec, logs, normal_queue_list   ARGV: rid, logs_from (-1: no logs)
STATUS_VIEW = """
local fields = redis.call('HMGET', KEYS[1], 'status', 'owner', 'endpoint', 'queue', 'deadline', 'error',
  'inference_time')
if not fields[1] then return false end
local position = -1
if fields[1] == 'IN_QUEUE' then
  local qkey = 'rq:queue:' .. fields[4]
  local found = redis.call('LPOS', qkey, ARGV[1])
  if not found then
    position = 0
  elseif qkey ~= KEYS[3] then
    position = found + redis.call('LLEN', KEYS[3])
  else
    position = found
  end
end
local logs = {}
if tonumber(ARGV[2]) >= 0 then logs = redis.call('LRANGE', KEYS[2], ARGV[2], -1) end
return {fields, position, logs}
"""
