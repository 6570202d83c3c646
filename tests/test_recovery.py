"""Recovery's repair scan is gated fleet-wide; stale notifications are swept every time."""

from __future__ import annotations

from subtitle_tasks.recovery import Recovery
from subtitle_tasks.state import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def _orphan(store: MemoryStore, n: int) -> str:
    gid = store.create_request(request_id=f"r{n}", generation_id=f"g{n}", upload_id=f"u{n}", language_code="en",
                               name=None, environment=None, on_ready=[], on_error=[], ttl=3600).generation_id
    store._due.pop(gid)  # its schedule entry was lost (a lost write, a hand edit)
    return gid


def test_the_repair_scan_runs_once_per_interval_across_sweepers():
    clock = Clock()
    store = MemoryStore(clock=clock)
    sweepers = [Recovery(store, lambda rid: "failed", stale=30, repair_every=300) for _ in range(3)]
    _orphan(store, 1)
    assert [s.sweep()["repaired"] for s in sweepers] == [1, 0, 0]
    _orphan(store, 2)
    clock.t += 299
    assert sweepers[1].sweep()["repaired"] == 0  # within the interval: not scanned again
    clock.t += 2
    assert sweepers[2].sweep()["repaired"] == 1
    assert store.counts()["scheduled"] == 2


def test_stale_notifications_are_swept_every_time_even_when_repair_is_gated():
    clock = Clock()
    store = MemoryStore(clock=clock)
    sent: list[str] = []

    def notify(rid: str) -> str:  # a notifier that sends and settles
        sent.append(rid)
        store.settle(rid, "failed")
        return "failed"

    recovery = Recovery(store, notify, stale=30, repair_every=300)
    recovery.sweep()  # takes the repair gate
    for n in (1, 2):
        gid = store.create_request(request_id=f"r{n}", generation_id=f"g{n}", upload_id=f"u{n}", language_code="en",
                                   name=None, environment=None, on_ready=[], on_error=[], ttl=3600).generation_id
        store.finish(gid, "error", {"code": "track_errored", "message": "x"})
        clock.t += 31  # its notifier went silent
        assert recovery.sweep() == {"repaired": 0, "renotified": 1}
    assert sent == ["r1", "r2"]
