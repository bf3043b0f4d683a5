"""``UploadLedger``: what an upload session has received, in Redis, each step one atomic script.

Beside the session itself (``server.uploads.PendingUpload`` under ``Keys.upload(token)``), a hash
``<that key>:ledger`` keeps, for as long as the session lives:

- ``reserved``: the bytes the upload holds, its kept parts and those being received. A request
  reserves bytes *before* writing them (``reserve``), so parts sent in parallel share the one
  ``max_upload_bytes`` instead of each seeing the whole of it; what a failed part held is released.
- ``part:<n>``: ``<file name> <size>`` of the kept copy of part ``n`` (parts are received under
  unique names; keeping one replaces the earlier copy, whose bytes are released then).
- ``phase``: ``open``, then ``completing`` for the one request that won the completion (a PUT of
  the whole file, or a multipart ``complete``), then ``completed`` with its ``answer``: a second
  completion gets ``409`` while the first runs, the same answer after it; parts arriving once the
  completion has begun are refused. So a committed file is never empty by accident nor overwritten.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

# KEYS: ledger, session   ARGV: bytes, max_bytes
# -> reserved total | -1 not open (completing/completed) | -2 no session | -3 over max_bytes
_RESERVE = """
local phase = redis.call('HGET', KEYS[1], 'phase')
if phase and phase ~= 'open' then return -1 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
local total = redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
if total > tonumber(ARGV[2]) then
  redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1]))
  return -3
end
redis.call('PEXPIRE', KEYS[1], math.max(redis.call('PTTL', KEYS[2]), 1000))
return total
"""

# KEYS: ledger   ARGV: bytes
_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local total = redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1]))
if total < 0 then redis.call('HSET', KEYS[1], 'reserved', 0) end
return 1
"""

# KEYS: ledger, session   ARGV: part number, file name, size
# -> {1, replaced file name or ''} | {0, ''}: refused (not open, or the session is gone)
_KEEP_PART = """
local phase = redis.call('HGET', KEYS[1], 'phase')
if phase and phase ~= 'open' then return {0, ''} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {0, ''} end
local field = 'part:' .. ARGV[1]
local old = redis.call('HGET', KEYS[1], field)
redis.call('HSET', KEYS[1], field, ARGV[2] .. ' ' .. ARGV[3])
if not old then return {1, ''} end
local space = string.find(old, ' ')
redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(string.sub(old, space + 1)))
return {1, string.sub(old, 1, space - 1)}
"""

# KEYS: ledger, session
# -> {'claimed', field, value, ...} | {'completing'} | {'completed', answer} | {'missing'}
_CLAIM = """
local phase = redis.call('HGET', KEYS[1], 'phase')
if phase == 'completed' then return {'completed', redis.call('HGET', KEYS[1], 'answer')} end
if phase == 'completing' then return {'completing'} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'missing'} end
redis.call('HSET', KEYS[1], 'phase', 'completing')
redis.call('PEXPIRE', KEYS[1], math.max(redis.call('PTTL', KEYS[2]), 1000))
local claimed = {'claimed'}
for _, item in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(claimed, item) end
return claimed
"""

# KEYS: ledger   ARGV: answer JSON, keep_s
_FINISH = """
redis.call('HSET', KEYS[1], 'phase', 'completed', 'answer', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: ledger   (a completion that failed: the upload is open again, for a corrected try)
_REOPEN = """
if redis.call('HGET', KEYS[1], 'phase') == 'completing' then redis.call('HSET', KEYS[1], 'phase', 'open') end
return 1
"""


class Reservation(enum.Enum):
    RESERVED = "reserved"
    NOT_OPEN = "not_open"
    NO_SESSION = "no_session"
    TOO_LARGE = "too_large"


@dataclass(frozen=True)
class KeptPart:
    """A part as the ledger keeps it: the file it was received into, and its size."""

    number: int
    file_name: str
    size: int


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"
    COMPLETING = "completing"
    COMPLETED = "completed"
    MISSING = "missing"


@dataclass(frozen=True)
class Claim:
    """The answer to "may I complete this upload?": the parts kept so far when claimed, the earlier
    completion's answer when already completed."""

    outcome: ClaimOutcome
    parts: dict[int, KeptPart]
    answer: dict[str, Any] | None = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class UploadLedger:
    """The atomic steps of one deployment's uploads (``session_key`` is ``Keys.upload(token)``)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)
        self._keep_part = client.register_script(_KEEP_PART)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._reopen = client.register_script(_REOPEN)

    @staticmethod
    def key(session_key: str) -> str:
        return f"{session_key}:ledger"

    async def reserve(self, session_key: str, nbytes: int, max_bytes: int) -> Reservation:
        """Hold ``nbytes`` more for this upload, if that keeps it within ``max_bytes`` and it is open."""
        total = int(await self._reserve(keys=[self.key(session_key), session_key], args=[nbytes, max_bytes]))
        if total >= 0:
            return Reservation.RESERVED
        return {-1: Reservation.NOT_OPEN, -2: Reservation.NO_SESSION}.get(total, Reservation.TOO_LARGE)

    async def release(self, session_key: str, nbytes: int) -> None:
        if nbytes > 0:
            await self._release(keys=[self.key(session_key)], args=[nbytes])

    async def keep_part(self, session_key: str, part: KeptPart) -> tuple[bool, str | None]:
        """Record ``part`` as the kept copy of its number: (kept, the replaced copy's file name)."""
        kept, replaced = await self._keep_part(
            keys=[self.key(session_key), session_key], args=[part.number, part.file_name, part.size]
        )
        return bool(int(kept)), (_text(replaced) or None)

    async def claim(self, session_key: str) -> Claim:
        """Claim the completion of the upload: exactly one caller gets ``CLAIMED``."""
        reply = await self._claim(keys=[self.key(session_key), session_key])
        outcome = ClaimOutcome(_text(reply[0]))
        if outcome is ClaimOutcome.COMPLETED:
            return Claim(outcome, {}, json.loads(_text(reply[1])))
        parts: dict[int, KeptPart] = {}
        fields = [_text(item) for item in reply[1:]]
        for field, value in zip(fields[::2], fields[1::2], strict=True):
            if field.startswith("part:"):
                number = int(field.removeprefix("part:"))
                file_name, size = value.rsplit(" ", 1)
                parts[number] = KeptPart(number, file_name, int(size))
        return Claim(outcome, parts)

    async def finish(self, session_key: str, answer: dict[str, Any], keep_s: int) -> None:
        """The claimed completion succeeded: later completions get ``answer`` (for ``keep_s``)."""
        await self._finish(keys=[self.key(session_key)], args=[json.dumps(answer), max(keep_s, 1)])

    async def reopen(self, session_key: str) -> None:
        """The claimed completion failed: the upload is open again."""
        await self._reopen(keys=[self.key(session_key)])
