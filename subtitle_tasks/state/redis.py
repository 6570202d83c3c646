"""The Redis store: hashes per request and generation, one sorted set of due steps.

Keys (``P`` is ``SUBTITLE_TASKS_KEY_PREFIX``)::

    P:req:{request_id}   hash   one caller's request
    P:gen:{gen_id}       hash   one DatoCMS generation, shared by its subscribers
    P:active             hash   "env|upload|language" -> generation in flight (dedup)
    P:due                zset   generation -> when its next step is due (server clock)
    P:finishing          zset   request -> when its callbacks started being sent
    P:lock:{name}        string who is working on a generation (or notifying a request)
    P:body_type          string the request body type the API accepted last
    P:dispatched         string steps handed out in the current pacing window

Every multi-key change is one Lua script, so a worker killed at any instant leaves
either the state before or the state after, never a mix. Times come from the Redis
server's clock.
"""

from __future__ import annotations

import uuid
from importlib import resources
from typing import Any

import redis

from .base import (
    BrokerWrites, Created, Generation, RequestRecord, encode_generation_fields, encode_value as _encode, lock_millis,
    split_field,
)

_SCRIPTS = ("create", "claim_due", "load", "advance", "finish", "cancel", "settle", "claim_finishing", "unlock",
            "extend_lock")

_REPAIR = """
-- Re-add to the due set every generation in flight that has no due entry (a lost
-- write, a manual edit). ARGV: prefix, gid...   Returns how many were repaired.
local prefix = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local repaired = 0
for i = 2, #ARGV do
  local gid = ARGV[i]
  -- The schedule check first: almost every generation has its entry, so the hash is
  -- read only for the rare one that does not.
  if not redis.call('ZSCORE', prefix .. ':due', gid) then
    local phase = redis.call('HGET', prefix .. ':gen:' .. gid, 'phase')
    if phase and phase ~= 'done' then
      redis.call('ZADD', prefix .. ':due', now, gid)
      repaired = repaired + 1
    end
  end
end
return repaired
"""


def database_index(client: redis.Redis) -> int:
    """Which database of its server a client talks to."""
    return int(client.connection_pool.connection_kwargs.get("db", 0) or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


class RedisStore:
    def __init__(self, client: redis.Redis, prefix: str = "subtitle_tasks", retention: float = 7 * 86400.0):
        self.client = client
        self.prefix = prefix
        self.retention = retention
        self._db = database_index(client)
        folder = resources.files(__package__) / "scripts"
        self._scripts = {name: client.register_script((folder / f"{name}.lua").read_text()) for name in _SCRIPTS}
        self._repair = client.register_script(_REPAIR)

    def _run(self, name: str, *args: Any) -> Any:
        return self._scripts[name](args=[self.prefix, *args])

    # -- the edge ---------------------------------------------------------------------
    def create_request(self, *, request_id, generation_id, upload_id, language_code, name, environment,
                       on_ready, on_error, ttl) -> Created:
        dedup = "|".join([environment or "", upload_id, language_code.lower()])
        callback_fields: list[str] = []
        for field, callbacks in (("on_ready", on_ready), ("on_error", on_error)):
            if callbacks:
                for pair in split_field(field, _encode(callbacks)).items():
                    callback_fields += pair
        gid, joined, existed = self._run(
            "create", request_id, generation_id, upload_id, language_code, name or "", environment or "", dedup,
            repr(float(ttl)), *callback_fields,
        )
        return Created(_text(gid), bool(int(joined)), bool(int(existed)))

    def load_request(self, request_id: str) -> RequestRecord | None:
        raw = self.client.hgetall(f"{self.prefix}:req:{request_id}")
        if not raw:
            return None
        return RequestRecord.from_hash(request_id, {_text(k): _text(v) for k, v in raw.items()})

    def cancel(self, request_id: str, error: dict) -> str:
        return _text(self._run("cancel", request_id, _encode(error), self.retention))

    # -- scheduling -------------------------------------------------------------------
    def claim_due(self, lease: float, limit: int, pace: int = 0, window: float = 0.0) -> list[tuple[str, str]]:
        """Due steps, leased; ``pace`` > 0 caps the fleet at that many per ``window`` seconds."""
        flat = self._run("claim_due", lease, limit, pace, window)
        return [(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]

    def release(self, generation_id: str) -> None:
        """Make a claimed generation due again now (its task could not be sent)."""
        self._run("advance", generation_id, 0)

    def repair_orphans(self, batch: int = 500) -> int:
        repaired = 0
        for chunk in self._scan_active(batch):
            repaired += int(self._repair(args=[self.prefix, *chunk]))
        return repaired

    def _scan_active(self, batch: int):
        cursor = 0
        while True:
            cursor, entries = self.client.hscan(f"{self.prefix}:active", cursor, count=batch)
            if entries:
                yield [_text(v) for v in entries.values()]
            if cursor == 0:
                return

    # -- generations ------------------------------------------------------------------
    def load_generation(self, generation_id: str) -> Generation | None:
        flat = self._run("load", generation_id)
        now, raw = float(_text(flat[0])), _pairs(flat[1:])
        if not raw:
            return None
        return Generation.from_hash(generation_id, now, raw)

    def advance(self, generation_id: str, delay: float, **fields: Any) -> bool:
        args: list[str] = []
        for name, value in encode_generation_fields(fields).items():
            args += [name, value]
        return bool(int(self._run("advance", generation_id, max(0.0, delay), *args)))

    def finish(self, generation_id: str, outcome: str, result: dict) -> list[str]:
        return [_text(r) for r in self._run("finish", generation_id, outcome, _encode(result), self.retention)]

    def settle(self, request_id: str, final_state: str, broker_writes: BrokerWrites | None = None) -> bool:
        """finishing -> final_state; ``broker_writes`` (callback messages) land in the same transaction."""
        args: list[Any] = [request_id, final_state, self.retention]
        if broker_writes is not None and broker_writes.commands:
            args += [self._db, broker_writes.db]
            for command in broker_writes.commands:
                args += command
        return bool(int(self._run("settle", *args)))

    def claim_finishing(self, stale: float, limit: int) -> list[str]:
        return [_text(r) for r in self._run("claim_finishing", stale, limit)]

    # -- coordination -----------------------------------------------------------------
    def lock(self, name: str, ttl: float) -> str | None:
        """Take ``P:lock:{name}`` for ``ttl`` seconds; the token proves ownership."""
        token = uuid.uuid4().hex
        if self.client.set(f"{self.prefix}:lock:{name}", token, nx=True, px=lock_millis(ttl)):
            return token
        return None

    def unlock(self, name: str, token: str) -> None:
        self._scripts["unlock"](keys=[f"{self.prefix}:lock:{name}"], args=[token])

    def extend_lock(self, name: str, token: str, ttl: float) -> bool:
        """Hold ``P:lock:{name}`` for ``ttl`` more seconds, if ``token`` still holds it."""
        return bool(int(self._scripts["extend_lock"](keys=[f"{self.prefix}:lock:{name}"],
                                                     args=[token, lock_millis(ttl)])))

    def preferred_body_type(self) -> str | None:
        value = self.client.get(f"{self.prefix}:body_type")
        return _text(value) if value else None

    def remember_body_type(self, body_type: str) -> None:
        self.client.set(f"{self.prefix}:body_type", body_type)

    def counts(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(f"{self.prefix}:due")
        pipe.hlen(f"{self.prefix}:active")
        pipe.zcard(f"{self.prefix}:finishing")
        due, active, finishing = pipe.execute()
        return {"scheduled": due, "in_flight": active, "finishing": finishing}
