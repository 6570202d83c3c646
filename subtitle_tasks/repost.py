"""When a POST whose answer was lost may be sent again: learned, not a fixed 300 s.

A POST that timed out or died with its worker may still have created a track. Before
sending another, the pipeline looks in the upload's track list for a track it did not
know; sending again is safe only once a track that POST created would surely be
visible there. How soon a new track shows is learned from the fleet's own accepted
POSTs, per site, in the same decayed histogram as the poll timing (schedule.py), under
the phase name ``visible``:

* a sample of accepted POSTs (every one until the histogram is warm, then one in
  ``PROBE_RATE``) lists the upload's tracks right after the 202: if the new track is
  there, the time since the POST was sent is recorded;
* a probe that did not see it yet records, when the job ends, the time from the POST
  to the job's result: an upper bound, so a slow-to-show track pushes the learned
  bound up, never down;
* a lost answer whose track the reconcile step then finds records the time from the
  POST to that find (an upper bound too).

The wait before a second POST is ``MARGIN`` x the learned ``QUANTILE`` of those times,
never shorter than ``floor`` (two leases: the first POST, with its inline retries, may
still be in flight on a worker whose lock has lapsed) nor longer than ``ceiling``
(SUBTITLE_TASKS_SUBMIT_GRACE). Cold, with too little evidence: the ceiling, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import schedule

VISIBLE = "visible"  # the timing histogram's phase name
PROBE_RATE = 0.05    # once warm: the share of accepted POSTs that pay one GET to keep the evidence fresh
QUANTILE = 0.99
MARGIN = 2.0
WARM = 10.0          # observations before the learned wait replaces the ceiling (its bounds keep it safe)


def should_probe(stats: Sequence[float] | None, rng: Callable[[], float], rate: float = PROBE_RATE) -> bool:
    """Whether this accepted POST should look for its track at once (to learn from it)."""
    return not schedule.is_warm(stats, WARM) or rng() < rate


def repost_after(stats: Sequence[float] | None, *, floor: float, ceiling: float) -> float:
    """Seconds after a POST with an unknown outcome before a second one may go out."""
    ceiling = max(floor, ceiling)
    if not schedule.is_warm(stats, WARM):
        return ceiling
    return min(ceiling, max(floor, MARGIN * schedule.quantile(stats, QUANTILE)))
