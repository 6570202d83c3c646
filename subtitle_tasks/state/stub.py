"""In-process store: RedisStore's rules (and its Lua scripts'), kept in dicts behind a lock.

For unit tests (inject ``clock`` and move time without sleeping) and for a single
process that wants the pipeline without Redis. Threads of one process share it;
separate processes do not, and nothing survives a restart.

It mirrors the Redis layout on purpose: records are hashes of strings parsed by the
same ``from_hash`` constructors, the schedule and finishing sets are score maps
ordered like sorted sets, and keys with a TTL expire when next touched (plus an
occasional sweep), as Redis expires keys lazily and in the background. The schedule is
one score map plus, per generation, which of Redis's per-site sets would hold it; an
in-memory store has no entries from before per-site schedules to migrate.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base import (
    DONE,
    FINISHING,
    SCHEDULE_POLL,
    SCHEDULE_SUBMIT,
    SUBMIT,
    WAITING,
    BrokerWrites,
    Created,
    Generation,
    RequestRecord,
    RequestRow,
    dedup_field,
    encode_generation_fields,
    lock_millis,
    schedule_kind,
    sizes_by_site,
    writes_groups,
)
from .base import encode_value as _encode


def _stamp(t: float) -> str:
    # The Lua scripts write times with six decimals.
    return f"{t:.6f}"


def _ids(subs: str) -> list[str]:
    return [s for s in subs.split(",") if s]


class _Keyspace:
    """Values with optional expiry times, expired on access like Redis keys."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._expires: dict[str, float] = {}

    def get(self, key: str, now: float) -> Any:
        when = self._expires.get(key)
        if when is not None and now > when:  # Redis keeps a key alive up to its expiry instant
            self.delete(key)
        return self._values.get(key)

    def set(self, key: str, value: Any, ttl: float | None = None, *, now: float) -> None:
        """SET semantics: a new value drops any previous TTL."""
        self._values[key] = value
        self._expires.pop(key, None)
        if ttl is not None:
            self._expires[key] = now + ttl

    def expire(self, key: str, seconds: float, now: float) -> None:
        """EXPIRE semantics: a TTL of zero or less deletes the key at once."""
        if key not in self._values:
            return
        if seconds <= 0:
            self.delete(key)
        else:
            self._expires[key] = now + seconds

    def delete(self, key: str) -> None:
        self._values.pop(key, None)
        self._expires.pop(key, None)

    def sweep(self, now: float) -> None:
        for key in [k for k, when in self._expires.items() if now > when]:
            self.delete(key)


@dataclass
class _SiteClaim:
    """One site's share of a claim in progress (claim_due.lua keeps the same per site)."""

    site: str
    budget: int  # steps it may still hand out in this claim
    got: int = 0  # steps handed out so far
    ran_out: bool = False  # its due entries are all taken


class MemoryStore:
    """The :class:`~subtitle_tasks.state.base.Store` protocol in memory, with RedisStore's semantics."""

    def __init__(self, clock: Callable[[], float] = time.time, retention: float = 7 * 86400.0,
                 sweep_interval: float = 60.0):
        self.clock = clock
        self.retention = retention
        self.sweep_interval = sweep_interval
        self._lock = threading.Lock()
        self._keys = _Keyspace()                # "req:{id}", "gen:{id}" hashes; "lock:{name}" tokens
        self._active: dict[str, str] = {}       # dedup field -> generation in flight
        self._due: dict[str, float] = {}        # generation -> when its next step is due
        # generation -> (site, "submit" | "poll"): which of Redis's schedule sets holds it
        self._slot: dict[str, tuple[str, str]] = {}
        self._metrics: dict[str, float] = {}    # the fleet counters metrics.py keeps
        self._recent: list[str] = []            # newest settled requests first
        self._outcomes: dict[int, dict[str, int]] = {}  # minute -> outcome -> requests
        self._finishing: dict[str, float] = {}  # request -> when its callbacks started
        self._body_types: dict[str, str] = {}  # site -> body type
        self.broker_writes: list[BrokerWrites] = []  # what settle would have queued on a broker
        self._next_sweep = float("-inf")
        self._paced: dict[str, tuple[int, float]] = {}  # site -> (steps handed out, its pacing window's end)
        self._claim_turn = 0  # which site claims first (claim_due.lua's rotation)

    # -- internals --------------------------------------------------------------------
    def _now(self) -> float:
        """The clock, read once per atomic step (as each Lua script reads TIME once)."""
        now = self.clock()
        if now >= self._next_sweep:
            # Lazy expiry alone would keep records nobody reads again forever.
            self._keys.sweep(now)
            self._next_sweep = now + self.sweep_interval
        return now

    def _gen(self, gid: str, now: float) -> dict[str, str] | None:
        gen: dict[str, str] | None = self._keys.get(f"gen:{gid}", now)  # "gen:" keys hold hashes
        return gen

    def _req(self, rid: str, now: float) -> dict[str, str] | None:
        req: dict[str, str] | None = self._keys.get(f"req:{rid}", now)  # "req:" keys hold hashes
        return req

    def _state(self, rid: str, now: float) -> str | None:
        req = self._req(rid, now)
        return req.get("state") if req else None

    def _end_generation(self, gid: str, gen: dict[str, str], now: float, **fields: str) -> None:
        """Mark done, drop it from the schedule and the dedup index, start its retention."""
        gen.update(phase=DONE, finished=_stamp(now), **fields)
        self._unschedule(gid)
        dedup = gen.get("dedup")
        if dedup and self._active.get(dedup) == gid:
            del self._active[dedup]
        # The generation outlives its requests' retention slightly: status() reads both.
        self._keys.expire(f"gen:{gid}", max(0.001, self.retention) + 3600, now)

    def _schedule(self, gid: str, gen: dict[str, str], due: float) -> None:
        """File a generation in its site's submit or poll set (as advance.lua does)."""
        self._due[gid] = due
        self._slot[gid] = (gen.get("site") or "", schedule_kind(gen.get("phase", "")))

    def _unschedule(self, gid: str) -> None:
        self._due.pop(gid, None)
        self._slot.pop(gid, None)

    def _mapping(self, key: str, now: float) -> dict[str, Any]:
        """The hash or sorted set at ``key``, created empty if absent (as HSET or ZADD
        creates it), keeping the expiry of one that exists."""
        value: dict[str, Any] | None = self._keys.get(key, now)
        if value is None:
            value = {}
            self._keys.set(key, value, now=now)
        return value

    @staticmethod
    def _first_by_score(scores: dict[str, float], upto: float, limit: int) -> list[str]:
        """ZRANGEBYSCORE -inf upto LIMIT 0 limit: by score, ties by member; a negative limit means all."""
        hits = [(score, member) for member, score in scores.items() if score <= upto]
        chosen = sorted(hits) if limit < 0 else heapq.nsmallest(int(limit), hits)
        return [member for _, member in chosen]

    # -- the edge ---------------------------------------------------------------------
    def create_request(self, *, request_id: str, generation_id: str, upload_id: str, language_code: str,
                       name: str | None, environment: str | None, on_ready: list[dict[str, Any]],
                       on_error: list[dict[str, Any]], ttl: float, fingerprint: str = "", max_joins: int = 0,
                       site: str = "", duration_band: int | None = None) -> Created:
        # ``ttl``: seconds from now until the request's deadline.
        dedup = dedup_field(site, environment, upload_id, language_code)
        on_ready_raw, on_error_raw = _encode(on_ready), _encode(on_error)
        with self._lock:
            now = self._now()
            existing = self._req(request_id, now)
            if existing is not None and "gen" in existing:
                # A retry of the same request; with other parameters, a conflict.
                conflict = bool(existing.get("fp")) and existing["fp"] != fingerprint
                return Created(existing["gen"], False, True, conflict=conflict)
            ends = now + float(ttl)
            gid = self._active.get(dedup)
            gen = self._gen(gid, now) if gid else None
            if gen is not None and gen.get("phase") in (None, DONE):
                gen = None  # finished: nothing to join
            joined = gen is not None
            if gid and gen is not None:
                if max_joins and len(_ids(gen["subs"])) >= max_joins:
                    return Created(gid, False, False, full=True)
                gen["subs"] = gen["subs"] + "," + request_id
                if ends > float(gen["deadline"]):
                    gen["deadline"] = _stamp(ends)  # the generation lives as long as its longest wait
            else:
                gid = generation_id
                new_gen = {
                    "upload": upload_id, "lang": language_code, "name": name or "", "env": environment or "",
                    "site": site or "",
                    "dedup": dedup, "phase": SUBMIT, "attempts": "0", "errors": "0",
                    "created": _stamp(now), "deadline": _stamp(ends), "due": _stamp(now), "subs": request_id,
                }
                if duration_band is not None:
                    new_gen["dband"] = str(int(duration_band))
                self._keys.set(f"gen:{gid}", new_gen, now=now)
                self._active[dedup] = gid
                self._schedule(gid, new_gen, now)
            self._keys.set(f"req:{request_id}", {
                "gen": gid, "upload": upload_id, "lang": language_code, "state": WAITING,
                "created": _stamp(now), "deadline": _stamp(ends), "on_ready": on_ready_raw, "on_error": on_error_raw,
                "fp": fingerprint,
            }, now=now)
            return Created(gid, joined, False)

    def load_request(self, request_id: str) -> RequestRecord | None:
        with self._lock:
            raw = self._req(request_id, self._now())
            return RequestRecord.from_hash(request_id, dict(raw)) if raw else None

    def cancel(self, request_id: str, error: dict[str, Any]) -> str:
        error_raw = _encode(error)
        with self._lock:
            now = self._now()
            req = self._req(request_id, now)
            state = req.get("state") if req else None
            if req is None or state != WAITING:
                return state or "unknown"
            req.update(state=FINISHING, outcome="error", error=error_raw)
            self._finishing[request_id] = now
            gid = req["gen"]
            gen = self._gen(gid, now)
            # Unlike cancel.lua, a vanished generation is left vanished (the script would
            # write a partial hash holding only the done marker).
            if gen is not None and gen.get("phase") != DONE and not self._others_waiting(gen, request_id, now):
                # DatoCMS cannot cancel a job; with nobody left waiting we just stop watching it.
                self._end_generation(gid, gen, now, outcome="cancelled")
            return WAITING

    def _others_waiting(self, gen: dict[str, str], request_id: str, now: float) -> bool:
        return any(rid != request_id and self._state(rid, now) == WAITING for rid in _ids(gen.get("subs", "")))

    # -- scheduling -------------------------------------------------------------------
    def claim_due(self, lease: float, limit: int, pace: int = 0, window: float = 0.0,
                  holder: str = "") -> list[tuple[str, str]]:
        """claim_due.lua's rules: room shared equally among sites, half to submits, pace per site."""
        with self._lock:
            now = self._now()
            if limit <= 0:
                return []
            lease = max(lease, 0.001)  # a leased entry must not come due again within this claim
            # Each set's due entries in ZRANGEBYSCORE order; taking pops from the front.
            due_now: dict[tuple[str, str], list[str]] = {}
            for gid in self._first_by_score(self._due, now, -1):
                due_now.setdefault(self._slot[gid], []).append(gid)
            sites = ["", *sorted({site for site, _ in (self._slot[g] for g in self._due) if site})]
            turn = self._claim_turn
            out: list[tuple[str, str]] = []

            def take(slot: tuple[str, str], n: int) -> tuple[int, bool]:
                if n <= 0:
                    return 0, False
                queue = due_now.get(slot, [])
                ids, queue[:n] = queue[:n], []
                got = 0
                for gid in ids:
                    gen = self._gen(gid, now)
                    phase = gen.get("phase") if gen else None
                    if phase in (None, DONE):
                        self._unschedule(gid)  # a stale entry: nothing left to step
                    else:
                        # The lease: if the step handed out is lost, the entry simply comes due again.
                        self._due[gid] = now + lease
                        out.append((gid, phase))
                        got += 1
                return got, len(ids) < n

            def claim_site(site: str, want: int) -> tuple[int, bool]:
                submit_share = want // 2 + (1 if want % 2 and turn % 2 == 0 else 0)
                s_got, s_out = take((site, SCHEDULE_SUBMIT), submit_share)
                p_got, p_out = take((site, SCHEDULE_POLL), want - s_got)
                more = 0
                if s_got + p_got < want and not s_out:
                    more, s_out = take((site, SCHEDULE_SUBMIT), want - s_got - p_got)
                return s_got + p_got + more, s_out and p_out

            def used(site: str) -> int:
                count, ends = self._paced.get(site, (0, -math.inf))
                return 0 if now >= ends else count

            active: list[_SiteClaim] = []  # in turn order
            for i in range(len(sites)):
                site = sites[(turn + i) % len(sites)]
                budget = min(limit, pace - used(site)) if pace > 0 else limit
                if budget > 0:
                    active.append(_SiteClaim(site, budget))
            room = limit
            spent: dict[str, _SiteClaim] = {}
            while room > 0 and active:
                share, extra = divmod(room, len(active))
                still: list[_SiteClaim] = []
                for i, entry in enumerate(active):
                    want = min(share + (1 if i < extra else 0), entry.budget)
                    if want > 0:
                        got, entry.ran_out = claim_site(entry.site, want)
                        entry.budget -= got
                        entry.got += got
                        room -= got
                    if entry.budget > 0 and not entry.ran_out:
                        still.append(entry)
                    spent[entry.site] = entry
                active = still
            if pace > 0:
                for entry in spent.values():
                    if entry.got:
                        count, ends = self._paced.get(entry.site, (0, -math.inf))
                        if now >= ends:  # the first steps of a window start it (PEXPIRE on a fresh key)
                            count, ends = 0, now + max(1, int(window * 1000)) / 1000.0
                        self._paced[entry.site] = (count + entry.got, ends)
            if out:
                self._claim_turn += 1
                if holder:  # held until step_published (step watch)
                    self._mapping(f"stepclaim:{holder}", now).update({gid: f"{now:.3f}" for gid, _ in out})
            return out

    def release(self, generation_id: str) -> None:
        """Make a claimed generation due again now (its task could not be sent)."""
        self.advance(generation_id, 0)

    def count_published(self, steps: int) -> None:
        if steps > 0:
            with self._lock:
                now = self._now()
                self._keys.set("steps:published", (self._keys.get("steps:published", now) or 0) + steps, now=now)

    def published_count(self) -> int:
        with self._lock:
            return int(self._keys.get("steps:published", self._now()) or 0)

    def repair_orphans(self, batch: int = 500) -> int:
        with self._lock:
            now = self._now()
            repaired = 0
            for gid in set(self._active.values()):
                gen = self._gen(gid, now)
                if gen is not None and gen.get("phase") != DONE and gid not in self._due:
                    self._schedule(gid, gen, now)
                    repaired += 1
            return repaired

    # -- generations ------------------------------------------------------------------
    def load_generation(self, generation_id: str) -> Generation | None:
        with self._lock:
            now = self._now()
            raw = self._gen(generation_id, now)
            # load.lua reports its clock with six decimals.
            return Generation.from_hash(generation_id, float(_stamp(now)), dict(raw)) if raw else None

    def advance(self, generation_id: str, delay: float, fence: tuple[str, str] | None = None, **fields: Any) -> bool:
        updates = encode_generation_fields(fields)
        with self._lock:
            now = self._now()
            if fence is not None and self._keys.get(f"lock:{fence[0]}", now) != fence[1]:
                return False  # the lock lapsed or was broken: not this holder's step any more
            gen = self._gen(generation_id, now)
            if gen is None or gen.get("phase") == DONE:
                return False  # finished meanwhile: a cancel or another finisher won
            due = now + max(0.0, delay)
            for name, value in updates.items():  # as advance.lua: empty removes the field
                if value == "":
                    gen.pop(name, None)
                else:
                    gen[name] = value
            gen["due"] = _stamp(due)
            self._schedule(generation_id, gen, due)  # into the other set when the phase moved on
            return True

    def finish(self, generation_id: str, outcome: str, result: dict[str, Any]) -> list[str]:
        result_raw = _encode(result)
        with self._lock:
            now = self._now()
            gen = self._gen(generation_id, now)
            if gen is None or gen.get("phase") == DONE:
                return []  # someone else finished it: only the first caller notifies
            self._end_generation(generation_id, gen, now, outcome=outcome, result=result_raw)
            notify: list[str] = []
            for rid in _ids(gen.get("subs", "")):
                req = self._req(rid, now)
                if req is not None and req.get("state") == WAITING:
                    req.update(state=FINISHING, outcome=outcome)
                    self._finishing[rid] = now
                    notify.append(rid)
            return notify

    def settle(self, request_id: str, final_state: str,
               broker_writes: BrokerWrites | Sequence[BrokerWrites] | None = None,
               undelivered: Sequence[dict[str, Any]] = (), give_up: bool = False) -> bool:
        with self._lock:
            now = self._now()
            self._finishing.pop(request_id, None)
            req = self._req(request_id, now)
            if req is None or req.get("state") != FINISHING:
                return False
            req.update(state=final_state, finished=_stamp(now))
            self._recent.insert(0, request_id)
            del self._recent[10000:]
            if undelivered:
                req["undelivered"] = _encode(list(undelivered))
            # No broker here (and so no broker key to check): kept for inspection.
            self.broker_writes.extend(writes_groups(broker_writes))
            self._keys.expire(f"req:{request_id}", max(0.001, self.retention), now)
            return True

    def notify_failed(self, request_id: str) -> int:
        with self._lock:
            req = self._req(request_id, self._now())
            if req is None or req.get("state") != FINISHING:
                return 0
            req["nfail"] = str(int(req.get("nfail") or 0) + 1)
            return int(req["nfail"])

    def mark_sent(self, request_id: str, count: int) -> bool:
        with self._lock:
            req = self._req(request_id, self._now())
            if req is None or req.get("state") != FINISHING:
                return False
            req["sent"] = str(count)
            return True

    def claim_finishing(self, stale: float, limit: int) -> list[str]:
        with self._lock:
            now = self._now()
            ids = self._first_by_score(self._finishing, now - stale, limit)
            for rid in ids:
                self._finishing[rid] = now  # claimed: a second recoverer now sees it as fresh
            return ids

    # -- coordination -----------------------------------------------------------------
    def lock(self, name: str, ttl: float, owner: str = "") -> str | None:
        """Take ``lock:{name}`` for ``ttl`` seconds (whole milliseconds, at least one)."""
        with self._lock:
            now = self._now()
            key = f"lock:{name}"
            if self._keys.get(key, now) is not None:
                return None
            token = f"{owner}/{uuid.uuid4().hex}" if owner else uuid.uuid4().hex
            self._keys.set(key, token, lock_millis(ttl) / 1000.0, now=now)
            return token

    def unlock(self, name: str, token: str) -> None:
        with self._lock:
            key = f"lock:{name}"
            # Only the holder releases: the lock may have expired and been retaken.
            if self._keys.get(key, self._now()) == token:
                self._keys.delete(key)

    def extend_lock(self, name: str, token: str, ttl: float) -> bool:
        with self._lock:
            now = self._now()
            key = f"lock:{name}"
            if self._keys.get(key, now) != token:
                return False
            self._keys.set(key, token, lock_millis(ttl) / 1000.0, now=now)
            return True

    def preferred_body_type(self, site: str = "") -> str | None:
        with self._lock:
            return self._body_types.get(site) or None

    def remember_body_type(self, body_type: str, site: str = "") -> None:
        with self._lock:
            self._body_types[site] = body_type

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"scheduled": len(self._due), "in_flight": len(self._active), "finishing": len(self._finishing)}

    def scheduled_by_site(self) -> dict[str, dict[str, int]]:
        return sizes_by_site(self.schedule_stats(0.0)["schedules"])

    # -- metrics (subtitle_tasks/metrics.py; RedisStore's P:metrics, P:outcomes:{minute}) --
    def metrics_add(self, increments: Mapping[str, float]) -> None:
        with self._lock:
            for field, amount in increments.items():
                self._metrics[field] = self._metrics.get(field, 0.0) + float(amount)

    def metrics_values(self) -> dict[str, float]:
        with self._lock:
            return dict(self._metrics)

    def count_outcomes(self, outcomes: Mapping[str, int]) -> None:
        with self._lock:
            bucket = self._outcomes.setdefault(int(self._now() // 60), {})
            for outcome, n in outcomes.items():
                bucket[outcome] = bucket.get(outcome, 0) + int(n)

    def recent_outcomes(self, minutes: int = 60) -> dict[str, int]:
        with self._lock:
            minute = int(self._now() // 60)
            sums: dict[str, int] = {}
            for m in range(minute - minutes + 1, minute + 1):
                for outcome, n in self._outcomes.get(m, {}).items():
                    sums[outcome] = sums.get(outcome, 0) + n
            return sums

    def schedule_stats(self, overdue_after: float) -> dict[str, Any]:
        with self._lock:
            now = self._now()
            rows: dict[tuple[str, str], dict[str, Any]] = {}
            for site in {"", *(site for site, _ in self._slot.values())}:
                for kind in (SCHEDULE_SUBMIT, SCHEDULE_POLL):
                    rows[(site, kind)] = {"site": site, "kind": kind, "scheduled": 0, "due": 0, "overdue": 0,
                                          "oldest_due": None}
            for gid, when in self._due.items():
                row = rows[self._slot[gid]]
                row["scheduled"] += 1
                row["due"] += when <= now
                row["overdue"] += when <= now - overdue_after
                if row["oldest_due"] is None or when < row["oldest_due"]:
                    row["oldest_due"] = when
            return {"now": now, "schedules": sorted(rows.values(), key=lambda r: (r["site"], r["kind"]))}

    def list_requests(self, state: str | None = None, upload_id: str | None = None,
                      limit: int = 50) -> list[RequestRow]:
        with self._lock:
            now = self._now()
            in_flight = [rid for gid in self._active.values()
                         for rid in _ids((self._gen(gid, now) or {}).get("subs", ""))]
            order = [*in_flight, *self._finishing, *self._recent]
            rows: list[RequestRow] = []
            seen: set[str] = set()
            for rid in order:
                req = self._req(rid, now)
                if rid in seen or req is None:
                    continue
                seen.add(rid)
                if (state and req["state"] != state) or (upload_id and req["upload"] != upload_id):
                    continue
                rows.append({"request_id": rid, "state": req["state"], "upload_id": req["upload"],
                             "language_code": req["lang"], "generation_id": req["gen"],
                             "created_at": req.get("created"), "finished_at": req.get("finished")})
                if len(rows) >= limit:
                    break
            return rows

    # -- sweep cursor (subtitle_tasks/sweep.py; RedisStore's P:sweep[:{site}]) ---------
    def sweep_cursor(self, site: str = "") -> dict[str, Any] | None:
        import json  # local: this region is edited apart from the module's imports

        with self._lock:
            raw = self._keys.get(f"sweep:{site}" if site else "sweep", self._now())
        cursor = json.loads(raw) if raw else None
        return cursor if isinstance(cursor, dict) else None

    def save_sweep_cursor(self, site: str, cursor: dict[str, Any], ttl: float) -> None:
        import json

        raw = json.dumps(cursor, separators=(",", ":"))  # stored as text: a caller's dict stays its own
        with self._lock:
            now = self._now()
            self._keys.set(f"sweep:{site}" if site else "sweep", raw, lock_millis(ttl) / 1000.0, now=now)

    # -- learned poll timing (subtitle_tasks/schedule.py; RedisStore's P:timing:{phase}[:{site}]) --
    # Kept as the same encoded string timing.lua writes, so both stores round alike.
    _TIMING_TTL = 30 * 86400.0

    def timing_stats(self, site: str, phase: str) -> list[float] | None:
        from .. import schedule  # local: this region is edited apart from the module's imports

        with self._lock:
            raw = self._keys.get(f"timing:{phase}:{site}", self._now())
        return schedule.decode(raw)

    def record_timing(self, site: str, phase: str, seconds: float, decay: float, until: float | None = None) -> None:
        from .. import schedule

        if not schedule.observation(seconds, until):
            return
        with self._lock:
            now = self._now()
            key = f"timing:{phase}:{site}"
            counts = schedule.update(schedule.decode(self._keys.get(key, now)), seconds, decay, until)
            self._keys.set(key, schedule.encode(counts), lock_millis(self._TIMING_TTL) / 1000.0, now=now)

    def timing_points(self, site: str) -> list[str]:
        with self._lock:
            raw = self._keys.get(f"timing:points:{site}", self._now())
        return list(raw or [])

    def record_timing_point(self, site: str, point: str, keep: int) -> None:
        with self._lock:
            now = self._now()
            key = f"timing:points:{site}"
            kept = [point, *(self._keys.get(key, now) or [])][:max(1, keep)]
            self._keys.set(key, kept, lock_millis(self._TIMING_TTL) / 1000.0, now=now)

    # -- callback watch (subtitle_tasks/callback_watch.py; watch_*.lua's rules) --------
    def _watch_workers(self, now: float) -> dict[str, float]:
        return self._mapping("cbworkers", now)  # worker -> last beat

    def watch_beat(self, worker: str, broker: str, fence: float) -> bool:
        with self._lock:
            now = self._now()
            ttl = lock_millis(self.retention) / 1000.0
            workers = self._watch_workers(now)
            known = worker in workers
            workers[worker] = now
            self._keys.set(f"cbworker:{worker}", {"broker": broker, "fence": repr(float(fence))}, ttl, now=now)
            self._keys.expire(f"cbhold:{worker}", ttl, now)
            return known

    def watch_dead(self, stale: float, limit: int = 100) -> list[tuple[str, str, float | None]]:
        with self._lock:
            now = self._now()
            out = []
            for worker in self._first_by_score(self._watch_workers(now), now - stale, limit):
                reg = self._keys.get(f"cbworker:{worker}", now) or {}
                fence = reg.get("fence")
                out.append((worker, reg.get("broker", ""), float(fence) if fence else None))
            return out

    def watch_hold(self, worker: str, task_id: str, value: str) -> None:
        with self._lock:
            now = self._now()
            key = f"cbhold:{worker}"
            holds = self._keys.get(key, now)
            if holds is None:
                holds = {}
            holds[task_id] = value
            self._keys.set(key, holds, lock_millis(self.retention) / 1000.0, now=now)

    def watch_holds(self, worker: str) -> dict[str, str]:
        with self._lock:
            return dict(self._keys.get(f"cbhold:{worker}", self._now()) or {})

    def watch_release(self, worker: str, task_id: str, tag: str) -> bool:
        with self._lock:
            holds = self._keys.get(f"cbhold:{worker}", self._now())
            if holds is None or not holds.get(task_id, "").startswith(tag + "|"):
                return False
            del holds[task_id]
            if not holds:
                self._keys.delete(f"cbhold:{worker}")  # Redis drops an emptied hash
            return True

    def watch_forget(self, worker: str, stale: float | None = None) -> bool:
        with self._lock:
            now = self._now()
            workers = self._watch_workers(now)
            if stale is not None:
                seen = workers.get(worker)
                if seen is not None and seen > now - stale:
                    return False
                if self._keys.get(f"cbhold:{worker}", now):
                    return False
            workers.pop(worker, None)
            self._keys.delete(f"cbworker:{worker}")
            self._keys.delete(f"cbhold:{worker}")
            return True

    # -- step watch (subtitle_tasks/step_watch.py; step_*.lua's rules) -----------------
    def _step_workers(self, now: float) -> dict[str, float]:
        return self._mapping("stepworkers", now)  # worker -> last beat

    def step_beat(self, worker: str) -> bool:
        with self._lock:
            now = self._now()
            ttl = lock_millis(self.retention) / 1000.0
            workers = self._step_workers(now)
            known = worker in workers
            workers[worker] = now
            self._keys.expire("stepworkers", ttl, now)
            self._keys.expire(f"stephold:{worker}", ttl, now)
            self._keys.expire(f"stepclaim:{worker}", ttl, now)
            return known

    def step_hold(self, worker: str, generation_id: str, received_at: float, lease: float = 0.0) -> None:
        with self._lock:
            now = self._now()
            self._mapping(f"stephold:{worker}", now)[generation_id] = f"{received_at:.3f}"
            gen = self._gen(generation_id, now)
            if lease <= 0 or gen is None or gen.get("phase") == DONE or float(gen.get("due") or 0) > now:
                return
            score = self._due.get(generation_id)
            if score is not None and now < score < now + lease:  # leased, unsettled: stretch it
                self._due[generation_id] = now + lease

    def step_unhold(self, worker: str, generation_id: str) -> None:
        with self._lock:
            holds = self._keys.get(f"stephold:{worker}", self._now())
            if holds is not None:
                holds.pop(generation_id, None)
                if not holds:
                    self._keys.delete(f"stephold:{worker}")

    def step_published(self, worker: str, generation_ids: Sequence[str]) -> None:
        with self._lock:
            claims = self._keys.get(f"stepclaim:{worker}", self._now())
            if claims is not None:
                for gid in generation_ids:
                    claims.pop(gid, None)
                if not claims:
                    self._keys.delete(f"stepclaim:{worker}")

    def step_holds(self, worker: str) -> list[str]:
        with self._lock:
            return sorted(self._keys.get(f"stephold:{worker}", self._now()) or {})

    def _release_step(self, worker: str, gid: str, now: float) -> int:
        token = self._keys.get(f"lock:gen:{gid}", now)
        mid_step = isinstance(token, str) and token.startswith(worker + "/")
        if mid_step:
            self._keys.delete(f"lock:gen:{gid}")
        gen = self._gen(gid, now)
        if gen is not None and gen.get("phase") == DONE:  # it may have died notifying
            found = 0
            for rid in (r for r in gen.get("subs", "").split(",") if r):
                if rid in self._finishing:
                    self._finishing[rid] = 0.0
                    holder = self._keys.get(f"lock:notify:{rid}", now)
                    if isinstance(holder, str) and holder.startswith(worker + "/"):
                        self._keys.delete(f"lock:notify:{rid}")
                    found = 1
            return found
        score = self._due.get(gid)
        if gen is None or gen.get("phase") is None or score is None or score <= now:
            return 0
        if mid_step:  # died inside the step: what it wrote on its way is not a schedule
            gen["due"] = _stamp(now)
        elif float(gen.get("due") or 0) > now:
            return 0  # settled before its worker died
        self._due[gid] = now
        return 1

    def _forget_step_worker(self, worker: str, now: float) -> int:
        released = 0
        for kind in ("stephold", "stepclaim"):  # received, and claimed but not yet published
            for gid in list(self._keys.get(f"{kind}:{worker}", now) or {}):
                released += self._release_step(worker, gid, now)
            self._keys.delete(f"{kind}:{worker}")
        self._step_workers(now).pop(worker, None)
        return released

    def release_dead_steps(self, stale: float, limit: int = 100) -> tuple[int, list[str]]:
        with self._lock:
            now = self._now()
            dead = self._first_by_score(self._step_workers(now), now - stale, limit)
            return sum(self._forget_step_worker(worker, now) for worker in dead), dead

    def release_worker_steps(self, worker: str) -> int:
        with self._lock:
            return self._forget_step_worker(worker, self._now())

    def release_lost_steps(self, worker: str, generation_ids: Sequence[str]) -> int:
        with self._lock:
            now = self._now()
            released = 0
            holds = self._keys.get(f"stephold:{worker}", now) or {}
            for gid in generation_ids:
                released += self._release_step(worker, gid, now)
                holds.pop(gid, None)
            if not holds:
                self._keys.delete(f"stephold:{worker}")
            return released

    # -- once marks (once.py)
    def once_done(self, task_id: str) -> bool:
        with self._lock:
            return self._keys.get(f"once:{task_id}", self._now()) is not None

    def mark_once(self, task_id: str, ttl: float) -> None:
        with self._lock:
            self._keys.set(f"once:{task_id}", "1", ttl, now=self._now())
