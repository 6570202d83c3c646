"""The fleet-wide rate limiter: stub rules with fake time, Redis against a real server."""

from __future__ import annotations

import math
import multiprocessing
import socket
import threading
import time

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from subtitle_tasks.datocms.exceptions import RateLimited, RetryableError
from subtitle_tasks.local_redis import LocalRedis, free_port
from subtitle_tasks.rate_limits import (
    Acquisition,
    RedisBackend,
    SharedRateLimiter,
    StubBackend,
    key_for_token,
)


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self, start: float = 1_000_000.0):
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def max_in_any_window(times: list[float], window: float, eps: float = 0.0) -> int:
    """Most events inside any half-open interval ``(a - window, a]``.

    ``eps``: events closer than this to the interval's open end count as
    outside (a slot computed as ``e + window`` in floats may land a hair early).
    """
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while times[start] <= t - window + eps:
            start += 1
        best = max(best, end - start + 1)
    return best


def stub_limiter(fake: FakeTime, backend: StubBackend | None = None, **kwargs) -> SharedRateLimiter:
    kwargs.setdefault("limit", 3)
    kwargs.setdefault("window", 3.0)
    kwargs.setdefault("max_wait", 1.0)
    return SharedRateLimiter(backend or StubBackend(), "k", sleep=fake.sleep, clock=fake.time, **kwargs)


# --------------------------------------------------------------------------- keys


def test_key_for_token_is_a_truncated_hash_never_the_token():
    token = "da1b2c3d4e5f60718293a4b5c6d7e8f9"
    key = key_for_token(token)
    assert key.startswith("subtitle_tasks:ratelimit:")
    assert token not in key
    digest = key.rsplit(":", 1)[1]
    assert len(digest) == 24 and int(digest, 16) >= 0
    assert key == key_for_token(token)  # same in every process and environment
    assert key != key_for_token(token + "x")
    assert key_for_token(token, prefix="p").startswith("p:")


def test_key_for_token_refuses_an_empty_token():
    with pytest.raises(ValueError):
        key_for_token("")


@pytest.mark.parametrize(
    "kwargs",
    [{"limit": 0}, {"limit": 2.5}, {"limit": True}, {"window": 0}, {"window": -1}, {"max_wait": -0.1}],
)
def test_limiter_refuses_nonsense_settings(kwargs):
    with pytest.raises(ValueError):
        SharedRateLimiter(StubBackend(), "k", **kwargs)


# --------------------------------------------------------------------------- stub, fake time


def test_first_limit_requests_pass_without_sleeping():
    fake = FakeTime()
    limiter = stub_limiter(fake, limit=3)
    for _ in range(3):
        limiter.acquire()
    assert fake.sleeps == []
    snap = limiter.snapshot()
    assert snap["used"] == 3 and snap["limit"] == 3 and snap["remaining"] == 0
    assert snap["blocked_until"] is None


def test_next_request_sleeps_until_the_oldest_leaves_the_window():
    fake = FakeTime()
    limiter = stub_limiter(fake, limit=3, window=3.0, max_wait=1.0)
    limiter.acquire()             # t=0
    fake.advance(1.0)
    limiter.acquire()             # t=1
    fake.advance(1.0)
    limiter.acquire()             # t=2
    fake.advance(0.5)             # t=2.5: full; the t=0 slot frees at t=3
    decision = limiter.acquire_slot()
    assert fake.sleeps == [pytest.approx(0.5)]
    assert decision.granted and decision.wait == pytest.approx(0.5)
    assert fake.now == pytest.approx(1_000_003.0)


def test_window_slides_rather_than_resetting():
    # A fixed 3 s bucket would allow 3 at t=2.9 and 3 more at t=3.0.
    fake = FakeTime()
    limiter = stub_limiter(fake, limit=3, window=3.0, max_wait=0.0)
    fake.advance(2.9)
    for _ in range(3):
        limiter.acquire()
    fake.advance(0.1)
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    assert info.value.retry_after == pytest.approx(2.9)


def test_raises_rate_limited_when_the_slot_is_beyond_max_wait():
    fake = FakeTime()
    limiter = stub_limiter(fake, limit=2, window=3.0, max_wait=1.0)
    limiter.acquire()
    limiter.acquire()
    fake.advance(0.25)
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    exc = info.value
    assert isinstance(exc, RetryableError)
    assert exc.retry_after == pytest.approx(2.75)
    assert exc.status is None
    assert "2 requests per 3s" in exc.message
    assert fake.sleeps == []
    assert limiter.snapshot()["used"] == 2  # a refusal takes nothing


def test_retry_after_is_rounded_up_to_the_millisecond():
    fake = FakeTime(start=0.0)
    limiter = stub_limiter(fake, limit=1, window=1.0, max_wait=0.0)
    limiter.acquire()
    fake.advance(0.0004)
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    assert info.value.retry_after == 1.0  # 0.9996 rounded up, never early


def test_sleeping_callers_reserve_distinct_slots():
    # Sleeps that do not move the clock model many workers asking at once.
    fake = FakeTime(start=0.0)
    sleeps: list[float] = []
    backend = StubBackend()
    limiter = SharedRateLimiter(backend, "k", limit=2, window=1.0, max_wait=1.0, sleep=sleeps.append, clock=fake.time)
    decisions = [limiter.acquire_slot() for _ in range(4)]
    assert [d.at for d in decisions] == [0.0, 0.0, 1.0, 1.0]
    assert sleeps == [1.0, 1.0]
    with pytest.raises(RateLimited) as info:
        limiter.acquire()  # the next slot (t=2) is past max_wait
    assert info.value.retry_after == pytest.approx(2.0)
    snap = limiter.snapshot()
    assert snap["used"] == 2 and snap["reserved"] == 2 and snap["remaining"] == 0


def test_max_wait_zero_never_sleeps():
    fake = FakeTime()
    limiter = stub_limiter(fake, limit=1, max_wait=0.0)
    limiter.acquire()
    with pytest.raises(RateLimited):
        limiter.acquire()
    assert fake.sleeps == []


def test_keys_are_independent():
    fake = FakeTime()
    backend = StubBackend()
    a = SharedRateLimiter(backend, "a", limit=1, max_wait=0, sleep=fake.sleep, clock=fake.time)
    b = SharedRateLimiter(backend, "b", limit=1, max_wait=0, sleep=fake.sleep, clock=fake.time)
    a.acquire()
    b.acquire()
    a.penalize(10)
    with pytest.raises(RateLimited):
        a.acquire()
    assert b.snapshot()["blocked_until"] is None


def test_penalize_blocks_every_limiter_sharing_the_key():
    fake = FakeTime()
    backend = StubBackend()
    one = stub_limiter(fake, backend, limit=50, max_wait=1.0)
    other = stub_limiter(fake, backend, limit=50, max_wait=1.0)
    one.penalize(4)
    with pytest.raises(RateLimited) as info:
        other.acquire()
    assert info.value.retry_after == pytest.approx(4.0)
    assert "429" in info.value.message
    snap = other.snapshot()
    assert snap["blocked_until"] == pytest.approx(fake.now + 4)
    assert snap["blocked_for"] == pytest.approx(4.0)
    fake.advance(4.0)
    other.acquire()
    assert fake.sleeps == []
    assert other.snapshot()["blocked_until"] is None


def test_penalize_never_shortens_a_block_but_may_lengthen_it():
    fake = FakeTime()
    limiter = stub_limiter(fake)
    limiter.penalize(5)
    fake.advance(1)
    limiter.penalize(2)  # would end at t=3, the block ends at t=5
    assert limiter.snapshot()["blocked_for"] == pytest.approx(4)
    limiter.penalize(10)
    assert limiter.snapshot()["blocked_for"] == pytest.approx(10)


@pytest.mark.parametrize("seconds", [0, -3, None])
def test_penalize_ignores_empty_resets(seconds):
    fake = FakeTime()
    limiter = stub_limiter(fake)
    limiter.penalize(seconds)
    assert limiter.snapshot()["blocked_until"] is None


def test_short_block_within_max_wait_is_slept_through():
    fake = FakeTime()
    limiter = stub_limiter(fake, max_wait=1.0)
    limiter.penalize(0.75)
    decision = limiter.acquire_slot()
    assert decision.blocked == pytest.approx(0.75)
    assert fake.sleeps == [pytest.approx(0.75)]


def test_block_arriving_while_sleeping_on_a_reserved_slot_raises():
    fake = FakeTime()
    backend = StubBackend()
    other = stub_limiter(fake, backend, limit=1)

    def sleep_during_which_a_429_arrives(seconds: float) -> None:
        fake.sleep(seconds)
        other.penalize(5)

    limiter = SharedRateLimiter(
        backend, "k", limit=1, window=3.0, max_wait=3.0, sleep=sleep_during_which_a_429_arrives, clock=fake.time
    )
    limiter.acquire()
    fake.advance(1.0)
    with pytest.raises(RateLimited) as info:
        limiter.acquire()  # reserves t=3, sleeps 2 s, finds a fresh 5 s block
    assert fake.sleeps == [pytest.approx(2.0)]
    assert info.value.retry_after == pytest.approx(5.0)


def test_reset_forgets_log_and_block():
    fake = FakeTime()
    limiter = stub_limiter(fake, limit=1, max_wait=0)
    limiter.acquire()
    limiter.penalize(9)
    limiter.reset()
    limiter.acquire()


def test_threads_sharing_a_stub_never_overshoot():
    fake = FakeTime()  # frozen: everything happens in one instant
    backend = StubBackend()
    limiter = SharedRateLimiter(backend, "k", limit=50, window=3.0, max_wait=0.0, sleep=fake.sleep, clock=fake.time)
    granted = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        for _ in range(100):
            try:
                limiter.acquire()
            except RateLimited:
                continue
            granted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 50


def _clone(backend: StubBackend) -> StubBackend:
    copy = StubBackend()
    copy._logs = {k: list(v) for k, v in backend._logs.items()}
    copy._foreign = {k: list(v) for k, v in backend._foreign.items()}
    copy._plans = dict(backend._plans)
    copy._blocked_until = dict(backend._blocked_until)
    return copy


operations = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=2.0, allow_nan=False),           # time passing first
        st.sampled_from(["acquire", "acquire", "acquire", "penalize", "observe"]),
        st.floats(min_value=0, max_value=4.0, allow_nan=False),  # max_wait, penalty, or remaining / plan * 4
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=6),
    window=st.sampled_from([0.5, 1.0, 3.0]),
    plan=st.integers(min_value=1, max_value=8),
    share_ppm=st.sampled_from([300_000, 800_000, 1_000_000]),
    burst_ppm=st.sampled_from([125_000, 500_000, 1_000_000]),
    ops=operations,
)
def test_stub_never_exceeds_limit_in_any_window_and_retry_after_is_exact(limit, window, plan, share_ppm, burst_ppm,
                                                                        ops):
    backend = StubBackend()
    now = 500.0
    blocks: list[tuple[int, float]] = []    # (operation index, end of block)
    grants: list[tuple[int, float, float]] = []  # (operation index, decided at, slot)
    planned = math.inf  # index of the first answer announcing the plan
    for index, (dt, op, value) in enumerate(ops):
        now += dt
        if op == "penalize":
            backend.penalize("k", value, now=now)
            blocks.append((index, now + backend.blocked_for("k", now=now)))
            continue
        if op == "observe":
            backend.observe("k", plan=plan, remaining=round(plan * value / 4), window=window, since=None,
                            slack=0.0, plan_ttl=3600.0, max_foreign=limit, now=now)
            planned = min(planned, index)
            continue
        decision = backend.acquire("k", limit=limit, window=window, max_wait=value, now=now, share_ppm=share_ppm,
                                   burst_ppm=burst_ppm)
        assert decision.wait >= 0
        if decision.granted:
            assert decision.wait <= value
            grants.append((index, now, decision.at))
        else:
            assert decision.wait > value
            # With nothing else happening, the slot is there at now + wait, not before.
            later = now + decision.wait
            again = {"limit": limit, "window": window, "max_wait": 0, "share_ppm": share_ppm, "burst_ppm": burst_ppm}
            assert _clone(backend).acquire("k", now=later + 1e-9, **again).granted
            if decision.wait > 2e-3:
                assert not _clone(backend).acquire("k", now=later - 1e-3, **again).granted
    assert max_in_any_window([slot for _, _, slot in grants], window, eps=1e-9) <= limit
    # Once the plan is known, requests granted from then on keep to its share.
    effective = min(limit, max(1, plan * share_ppm // 1_000_000))
    planned_slots = [slot for index, _, slot in grants if index > planned]
    assert max_in_any_window(planned_slots, window, eps=1e-9) <= effective
    # ... and at most `burst` of them in any burst / effective of a window.
    burst = max(1, min(effective, -(-effective * burst_ppm // 1_000_000)))
    assert max_in_any_window(planned_slots, window * burst / effective, eps=1e-9) <= burst
    for block_index, end in blocks:
        for grant_index, decided, slot in grants:
            if grant_index > block_index and decided < end:
                assert slot >= end - 1e-9


# --------------------------------------------------------------------------- Redis, real server


@pytest.fixture(scope="module")
def redis_server():
    with LocalRedis() as server:
        yield server


@pytest.fixture
def client(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


def redis_limiter(client, **kwargs) -> SharedRateLimiter:
    kwargs.setdefault("limit", 3)
    kwargs.setdefault("window", 0.5)
    kwargs.setdefault("max_wait", 0.0)
    return SharedRateLimiter(RedisBackend(client), key_for_token("test-token"), **kwargs)


def test_redis_grants_limit_then_refuses_with_time_to_next_slot(client):
    limiter = redis_limiter(client, limit=3, window=0.5)
    first = limiter.acquire_slot()
    limiter.acquire()
    limiter.acquire()
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    retry_after = info.value.retry_after
    assert 0.3 < retry_after <= 0.5
    snap = limiter.snapshot()
    assert snap["used"] == 3 and snap["remaining"] == 0 and snap["blocked_until"] is None
    assert abs(snap["now"] - first.now) < 0.5
    time.sleep(retry_after)
    limiter.acquire()


def test_redis_keys_hold_no_token_share_a_slot_and_expire(client):
    limiter = redis_limiter(client, limit=5, window=0.5)
    limiter.acquire()
    limiter.penalize(0.3)
    keys = sorted(k.decode() for k in client.keys("*"))
    tag = "{" + key_for_token("test-token") + "}"
    assert keys == [f"{tag}:block", f"{tag}:log"]
    assert all("test-token" not in k for k in keys)
    assert 0 < client.pttl(f"{tag}:log") <= 502
    assert 0 < client.pttl(f"{tag}:block") <= 300
    time.sleep(0.55)
    assert client.keys("*") == []


def test_redis_sleeps_for_a_slot_within_max_wait(client):
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    limiter = redis_limiter(client, limit=2, window=0.4, max_wait=1.0, sleep=sleep)
    limiter.acquire()
    limiter.acquire()
    started = time.monotonic()
    decision = limiter.acquire_slot()
    elapsed = time.monotonic() - started
    assert decision.granted and len(sleeps) == 1
    assert 0.3 < sleeps[0] <= 0.4
    assert elapsed >= sleeps[0]
    assert limiter.snapshot()["used"] >= 1


def test_redis_uses_server_time_not_the_workers_clocks(client):
    backend = RedisBackend(client)
    key = key_for_token("test-token")
    skewed = [
        SharedRateLimiter(backend, key, limit=4, window=1.0, max_wait=0,
                          clock=lambda offset=offset: time.time() + offset)
        for offset in (-3600.0, 0.0, 7200.0, -1e9)
    ]
    for limiter in skewed:
        limiter.acquire()
    for limiter in skewed:
        with pytest.raises(RateLimited) as info:
            limiter.acquire()
        assert 0.5 < info.value.retry_after <= 1.0


def test_redis_penalize_never_shortens(client):
    limiter = redis_limiter(client)
    limiter.penalize(5)
    limiter.penalize(1)
    assert 4.9 < limiter.snapshot()["blocked_for"] <= 5.0
    limiter.penalize(8)
    assert 7.9 < limiter.snapshot()["blocked_for"] <= 8.0
    limiter.penalize(0)
    limiter.penalize(-1)
    assert limiter.snapshot()["blocked_for"] > 7.9


def test_redis_block_arriving_during_sleep_raises(client):
    other = redis_limiter(client)

    def sleep(seconds: float) -> None:
        time.sleep(seconds)
        other.penalize(2)

    limiter = redis_limiter(client, limit=1, window=0.2, max_wait=0.5, sleep=sleep)
    limiter.acquire()
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    assert 1.5 < info.value.retry_after <= 2.0


def test_redis_survives_a_script_cache_flush(client):
    limiter = redis_limiter(client, limit=10)
    limiter.acquire()
    client.script_flush()
    limiter.acquire()
    limiter.penalize(0.1)
    assert limiter.snapshot()["used"] == 2


def test_redis_decode_responses_client_works(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        limiter = SharedRateLimiter(RedisBackend(client), "decoded", limit=1, window=0.5, max_wait=0)
        limiter.reset()
        assert isinstance(limiter.acquire_slot(), Acquisition)
        with pytest.raises(RateLimited):
            limiter.acquire()
    finally:
        client.close()


def test_redis_unreachable_raises_connection_error_quickly():
    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    limiter = SharedRateLimiter(RedisBackend(client), "k", max_wait=0)
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        limiter.acquire()
    with pytest.raises(redis.exceptions.ConnectionError):
        limiter.penalize(3)
    assert time.monotonic() - started < 2.0


def test_redis_dying_mid_use_raises_connection_error():
    with LocalRedis() as server:
        client = redis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        limiter = SharedRateLimiter(RedisBackend(client), "k", max_wait=0)
        limiter.acquire()
        server.stop(kill=True)
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError):
            limiter.acquire()
        assert time.monotonic() - started < 2.0


def test_redis_silent_server_times_out_as_connection_error():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    try:
        port = listener.getsockname()[1]
        client = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2, socket_connect_timeout=0.2)
        limiter = SharedRateLimiter(RedisBackend(client), "k", max_wait=0)
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError) as info:
            limiter.acquire()
        assert isinstance(info.value.__cause__, redis.exceptions.TimeoutError)
        assert time.monotonic() - started < 2.0
    finally:
        listener.close()


# --------------------------------------------------------------------------- Redis, several processes

_fork = multiprocessing.get_context("fork")


def _hammer(url, key, limit, window, max_wait, start_at, stop_at, results):
    client = redis.Redis.from_url(url)
    limiter = SharedRateLimiter(RedisBackend(client), key, limit=limit, window=window, max_wait=max_wait)
    granted, observed, refused = [], [], 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < stop_at:
        try:
            decision = limiter.acquire_slot()
        except RateLimited as exc:
            refused += 1
            time.sleep(min(exc.retry_after, 0.05))
            continue
        observed.append(time.time())
        granted.append(decision.at)
    results.put((granted, observed, refused))
    client.close()


def _blocked_probe(url, key, results):
    client = redis.Redis.from_url(url)
    backend = RedisBackend(client)
    outcome = {}
    try:
        SharedRateLimiter(backend, key, limit=100, window=1.0, max_wait=0.0).acquire()
        outcome["refused"] = None
    except RateLimited as exc:
        outcome["refused"] = exc.retry_after
    decision = SharedRateLimiter(backend, key, limit=100, window=1.0, max_wait=2.0).acquire_slot()
    outcome["at"] = decision.at
    outcome["server_after"] = backend.snapshot(key, window=1.0, now=0)["now"]
    results.put(outcome)
    client.close()


def _run(target, args_for, count):
    results = _fork.Queue()
    processes = [_fork.Process(target=target, args=(*args_for(i), results)) for i in range(count)]
    for process in processes:
        process.start()
    collected = [results.get(timeout=20) for _ in processes]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0
    return collected


def test_four_processes_never_exceed_the_limit_in_any_window(redis_server, client):
    limit, window, duration = 10, 0.5, 1.2
    key = key_for_token("fleet-token")
    start_at = time.time() + 0.3
    collected = _run(
        _hammer,
        # Two processes queue for slots (max_wait = window), two are impatient.
        lambda i: (redis_server.url, key, limit, window, window if i % 2 else 0.02, start_at, start_at + duration),
        4,
    )
    granted = [t for g, _, _ in collected for t in g]
    observed = [t for _, o, _ in collected for t in o]
    refused = sum(r for _, _, r in collected)
    # The schedule the limiter handed out (server time) is exact; compare in
    # whole microseconds, as Redis does, so float rounding cannot blur a boundary.
    assert max_in_any_window([round(t * 1e6) for t in granted], round(window * 1e6)) == limit
    # Every process was served or told when to come back, the two that queue got a share
    # (the impatient two may find every slot of a window already reserved: on a loaded
    # machine one of them can go without), and the fleet as a whole used the budget.
    assert all(g or r for g, _, r in collected)
    assert sum(1 for g, _, _ in collected if g) >= 2
    assert len(granted) >= limit * int(duration / window)
    assert len(granted) <= limit * (int(duration / window) + 2)
    # What the processes actually did follows the schedule up to scheduling
    # jitter: allow 50 ms of it (this is what the caller's headroom is for).
    assert max_in_any_window(observed, window - 0.05) <= limit
    assert refused > 0  # the impatient ones were told to come back


def test_penalize_blocks_all_processes(redis_server, client):
    key = key_for_token("fleet-token")
    limiter = SharedRateLimiter(RedisBackend(client), key, limit=100, window=1.0, max_wait=0.0)
    limiter.penalize(0.6)
    blocked_until = limiter.snapshot()["blocked_until"]
    collected = _run(_blocked_probe, lambda i: (redis_server.url, key), 4)
    for outcome in collected:
        assert outcome["refused"] is not None and 0 < outcome["refused"] <= 0.6
        assert outcome["at"] >= blocked_until - 0.002  # PTTL has millisecond resolution
        assert outcome["server_after"] >= blocked_until


# --------------------------------------------------------------------------- the server's headers, both backends


class Budget:
    """One backend under test and a way to let its time pass.

    The stub runs on a fake clock (3 s windows, no sleeping); Redis keeps its own
    time, so its windows are short and time passes by sleeping.
    """

    def __init__(self, kind: str, client=None):
        self.kind = kind
        if kind == "stub":
            self.fake = FakeTime()
            self.backend = StubBackend()
            self.window = 3.0
        else:
            self.backend = RedisBackend(client)
            self.window = 0.5

    def limiter(self, **kwargs) -> SharedRateLimiter:
        kwargs.setdefault("window", self.window)
        kwargs.setdefault("max_wait", 0.0)
        kwargs.setdefault("burst", 1.0)  # pacing has its own tests
        if self.kind == "stub":
            kwargs.setdefault("sleep", self.fake.sleep)
            kwargs.setdefault("clock", self.fake.time)
        return SharedRateLimiter(self.backend, key_for_token("test-token"), **kwargs)

    def advance(self, seconds: float) -> None:
        if self.kind == "stub":
            self.fake.advance(seconds)
        else:
            time.sleep(seconds)


@pytest.fixture(params=["stub", "redis"])
def budget(request) -> Budget:
    if request.param == "stub":
        return Budget("stub")
    return Budget("redis", request.getfixturevalue("client"))


def take(limiter: SharedRateLimiter, count: int) -> None:
    for _ in range(count):
        limiter.acquire()


def test_announced_plan_lowers_the_effective_limit(budget):
    limiter = budget.limiter(limit=10, share=0.5)
    assert limiter.snapshot()["effective_limit"] == 10  # nothing announced yet: the configured limit
    assert limiter.observe(8, 8) == 0
    snap = limiter.snapshot()
    assert (snap["plan"], snap["effective_limit"], snap["remaining"]) == (8, 4, 4)
    take(limiter, 4)
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    assert "budget of 4 requests" in str(info.value)
    # Another limiter on the same key (another worker) follows the same plan.
    other = budget.limiter(limit=10, share=0.5)
    with pytest.raises(RateLimited):
        other.acquire()


def test_a_higher_plan_never_raises_the_configured_limit(budget):
    limiter = budget.limiter(limit=3, share=0.8)
    limiter.observe(1000, 1000)
    assert limiter.snapshot()["effective_limit"] == 3
    take(limiter, 3)
    with pytest.raises(RateLimited):
        limiter.acquire()


@pytest.mark.parametrize(
    "plan, share, expected", [(30, 0.7, 21), (60, 0.8, 48), (30, 0.8, 24), (1, 0.5, 1), (3, 1.0, 3)]
)
def test_share_of_the_plan_is_floored_exactly_and_never_below_one(budget, plan, share, expected):
    limiter = budget.limiter(limit=55, share=share)
    limiter.observe(plan, plan)
    assert limiter.snapshot()["effective_limit"] == expected
    take(limiter, expected)
    with pytest.raises(RateLimited):
        limiter.acquire()


def test_foreign_usage_shrinks_the_budget_for_one_window_then_expires(budget):
    limiter = budget.limiter(limit=10, share=1.0)
    take(limiter, 2)
    # The server counted 5 in its window, the log holds 2: 3 came from elsewhere.
    assert limiter.observe(10, 5) == 3
    snap = limiter.snapshot()
    assert (snap["used"], snap["foreign"], snap["remaining"]) == (5, 3, 5)
    # The same foreign traffic reported again is not added twice.
    assert limiter.observe(10, 5) == 0
    take(limiter, 5)
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    assert 0 < info.value.retry_after <= budget.window
    budget.advance(budget.window + 0.02)
    snap = limiter.snapshot()
    assert (snap["used"], snap["foreign"]) == (0, 0)
    take(limiter, 10)  # the whole plan again


def test_a_429_answer_fills_the_window(budget):
    limiter = budget.limiter(limit=55, share=0.8)
    limiter.acquire()
    # Remaining 0: the server's window is full although our log holds 1.
    assert limiter.observe(30, 0) == 29
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    assert budget.window * 0.8 < info.value.retry_after <= budget.window


def test_foreign_entries_are_capped_by_the_configured_limit(budget):
    limiter = budget.limiter(limit=5, share=1.0)
    assert limiter.observe(100_000, 0) == 5
    assert limiter.snapshot()["foreign"] == 5


@pytest.mark.parametrize(
    "limit, remaining",
    [(None, 3), ("abc", 1), (-5, 1), (0, 0), (True, 0), (2.5, 0), (10**12, 0), ("", ""), ([30], 1)],
)
def test_garbage_headers_are_ignored(budget, limit, remaining):
    limiter = budget.limiter(limit=4, share=0.5)
    assert limiter.observe(limit, remaining) == 0
    snap = limiter.snapshot()
    assert (snap["plan"], snap["effective_limit"], snap["foreign"]) == (None, 4, 0)
    take(limiter, 4)


@pytest.mark.parametrize("remaining", [None, "x", -1, 31, 1.5])
def test_a_usable_limit_with_garbage_remaining_sets_only_the_plan(budget, remaining):
    limiter = budget.limiter(limit=55, share=0.5)
    assert limiter.observe(30, remaining) == 0
    snap = limiter.snapshot()
    assert (snap["plan"], snap["effective_limit"], snap["foreign"]) == (30, 15, 0)


def test_header_strings_are_accepted(budget):
    limiter = budget.limiter(limit=55, share=1.0)
    assert limiter.observe(" 30 ", "27") == 3
    assert limiter.snapshot()["plan"] == 30


def test_the_plan_is_forgotten_after_plan_ttl(budget):
    ttl = 5.0 if budget.kind == "stub" else 0.4
    limiter = budget.limiter(limit=10, share=0.5, plan_ttl=ttl)
    limiter.observe(8, 8)
    assert limiter.snapshot()["effective_limit"] == 4
    budget.advance(ttl / 2)
    limiter.observe(8, 8)  # every answer renews it
    budget.advance(ttl * 0.75)
    assert limiter.snapshot()["plan"] == 8
    budget.advance(ttl * 0.5)
    snap = limiter.snapshot()
    assert (snap["plan"], snap["effective_limit"]) == (None, 10)


def test_reset_forgets_the_plan_and_foreign_entries(budget):
    limiter = budget.limiter(limit=10, share=0.5)
    limiter.observe(10, 2)
    limiter.reset()
    snap = limiter.snapshot()
    assert (snap["plan"], snap["used"], snap["foreign"]) == (None, 0, 0)


def test_observe_never_raises_when_the_backend_fails(caplog):
    class Broken(StubBackend):
        def observe(self, *args, **kwargs):
            raise RuntimeError("backend down")

    limiter = SharedRateLimiter(Broken(), "k", limit=3)
    with caplog.at_level("WARNING", logger="subtitle_tasks.rate_limits.base"):
        assert limiter.observe(30, 0) == 0
    assert "observe(30, 0) failed" in caplog.text
    unreachable = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    assert SharedRateLimiter(RedisBackend(unreachable), "k").observe(30, 0) == 0


# --------------------------------------------------------------------------- the server's headers, stub timing


def test_ours_sent_around_the_window_edge_are_not_taken_for_foreign():
    # Three requests at t=0 reach the server late (t=0.08); one more gets the
    # slot at t=3.05 and arrives at 3.06, while the server still counts the
    # first three. The log from the slot's window minus slack holds all four.
    fake = FakeTime()
    backend = StubBackend()
    limiter = stub_limiter(fake, backend, limit=10, share=1.0, slack=0.1)
    take(limiter, 3)
    fake.advance(3.05)
    limiter.acquire()
    fake.advance(0.02)
    assert limiter.observe(10, 6) == 0
    # Compared with the window ending now, the same answer looks like 3 foreign requests.
    strict = stub_limiter(fake, _clone(backend), limit=10, share=1.0, slack=0.0)
    assert strict.observe(10, 6) == 3


def test_foreign_count_starts_at_the_observing_requests_own_slot():
    # A slow request: its slot was at t=0, its answer comes at t=2.5. The
    # server counted it at some moment after t=0, possibly including our
    # requests of t=0; the log from t=-3.1 holds them, so nothing is foreign.
    fake = FakeTime()
    limiter = stub_limiter(fake, limit=10, share=1.0, slack=0.1)
    take(limiter, 4)
    fake.advance(2.5)
    assert limiter.observe(10, 6) == 0
    # From another thread with no slot of its own, the same answer compares
    # with the window ending now, which still holds the four: nothing either.
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(limiter.observe(10, 6)))
    thread.start()
    thread.join()
    assert result == [0]


def test_an_answer_older_than_the_history_only_sets_the_plan():
    fake = FakeTime()
    limiter = stub_limiter(fake, limit=10, share=0.5, slack=0.1)
    limiter.acquire()
    fake.advance(3.0)  # the answer took a whole window: too old to compare
    assert limiter.observe(10, 0) == 0
    assert limiter.snapshot()["effective_limit"] == 5


def test_foreign_entries_leave_exactly_one_window_after_they_were_seen():
    fake = FakeTime()
    limiter = stub_limiter(fake, limit=4, share=1.0, max_wait=0.0, burst=1.0)
    fake.advance(1.0)
    assert limiter.observe(4, 0) == 4
    fake.advance(2.999)
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    assert info.value.retry_after == pytest.approx(0.001)
    fake.advance(0.001)
    take(limiter, 4)


def test_once_the_plan_is_known_a_backlog_is_paced(budget):
    limiter = budget.limiter(limit=55, share=1.0, burst=0.25)
    take(limiter, 5)  # no plan yet: no pacing
    budget.advance(budget.window + 0.02)
    limiter.observe(8, 8)  # L = 8, B = 2: two at once, then two more a quarter window later
    take(limiter, 2)
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    assert 0 < info.value.retry_after <= budget.window / 4
    budget.advance(info.value.retry_after + 0.005)
    take(limiter, 2)


def test_a_paced_backlog_is_spread_evenly_over_the_window():
    fake = FakeTime()
    limiter = stub_limiter(fake, limit=55, share=0.5, burst=0.25, max_wait=3.0)
    limiter.observe(16, 16)  # L = 8, B = 2
    start = fake.now
    slots = [limiter.acquire_slot().at - start for _ in range(9)]
    assert slots == pytest.approx([0, 0, 0.75, 0.75, 1.5, 1.5, 2.25, 2.25, 3.0])
    # A lone request after a quiet spell goes at once.
    fake.advance(10)
    assert limiter.acquire_slot().wait == 0


def test_burst_one_turns_pacing_off():
    fake = FakeTime()
    limiter = stub_limiter(fake, limit=55, share=1.0, burst=1.0, max_wait=0.0)
    limiter.observe(8, 8)
    take(limiter, 8)
    with pytest.raises(RateLimited):
        limiter.acquire()


def test_limiter_refuses_nonsense_plan_settings():
    for kwargs in ({"share": 0}, {"share": 1.2}, {"share": True}, {"plan_ttl": 0}, {"slack": -1}, {"slack": 3.0},
                   {"burst": 0}, {"burst": 1.5}):
        with pytest.raises(ValueError):
            SharedRateLimiter(StubBackend(), "k", window=3.0, **kwargs)
