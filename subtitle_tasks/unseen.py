"""What a look that does not find the new track tells the learned schedule.

Pure functions, beside schedule.py: nothing here sleeps, reads a clock or touches Redis.

Once a site's timing is learned, a job poll looks in the upload's track list. When the
new track is not there, the poll has learned more than "not ready": the track has not
even shown, so its job is still running and all of its preparing is still ahead. A
track already listed as ``preparing`` may be ready at the next look; one not listed
yet seldom is. Planning from the ready times of only those generations whose track
showed later than the look puts the next poll where such generations actually end.
On durations that spread widely (jobs of 20 to 90 s, then up to 30 s preparing) this
saved a fifth of the looks in the schedule bench, at the same p95 target; on two
clusters of durations (short and long jobs), more than a quarter: a look that does
not find the track after the short cluster's tracks have shown says the job is a long
one, and the next look waits for that cluster.

What is learned, model-free. Each site keeps its last :data:`KEEP` generations as
points (seconds after the POST when the track showed, when it was ready), in the store
as a list. A look only bounds each moment between two looks, so each is drawn
uniformly inside the interval its looks bound (the ready time never before the
shown one), as schedule.spread() spreads a histogram's observation. Nothing is
assumed about how the two moments relate: the points are the joint distribution.

Conditioning. After a look at ``t`` that found no track, the plan is schedule.py's
dynamic program over the ready times of the kept points that showed after ``t``,
once there are :data:`ENOUGH` of them; with fewer (past the tail) the site's
histogram plans as before. The first look after the POST is planned from the
histogram (at the price below): nothing has been seen yet, and a track found at the
first look is known only to have shown since the POST, so the points say little
about the time before it.

The price of lateness. The histogram's plan finds by bisection the smallest price of a
late track (in polls) that keeps its planned late share within 5 %. Plans that learn
from every look spend that share differently (they can afford to wait when the track
is not listed), so the price is found for the whole policy instead (:func:`price`): it
replays every kept point through the conditioned looks and, once the track shows,
the site's plan, and takes the smallest price whose replay sees 95 % of them within
the target. That replay costs about a tenth of a second of CPU, so the pipeline keeps
the price per site and finds it again after :data:`RECALIBRATE` new points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from . import schedule

__all__ = [
    "ENOUGH",
    "KEEP",
    "RECALIBRATE",
    "Point",
    "counts_after",
    "decode",
    "encode",
    "next_delay",
    "point",
    "price",
    "replay_late_share",
]

# A price found on the same points it is then used on is optimistic; with 128 points and
# 20 per plan, the wide shape saw 7 % late where the replay promised 5 %; with these, 4 %.
KEEP = 256        # points a site keeps (about 3.2 KB in Redis)
ENOUGH = 30       # points that showed after a look, before the look is planned from them
RECALIBRATE = 16  # new points before a process finds the price again

Point = tuple[float, float]  # (shown, ready), seconds after the POST was accepted


def point(shown: tuple[float, float], ready: tuple[float, float], draw: Callable[[], float]) -> Point | None:
    """One generation as a point: when its track showed, somewhere in ``shown`` (the
    last look without it, the first with it), and when it was ready, in ``ready``; each
    drawn uniformly inside its interval with ``draw`` (uniform on [0, 1)), the ready
    time no earlier than the shown one. None for intervals that cannot be (negative,
    reversed, not finite, or ready before shown)."""
    low, high = shown
    ready_low, ready_high = ready
    values = (low, high, ready_low, ready_high)
    if not all(math.isfinite(v) and v >= 0 for v in values) or low > high or ready_low > ready_high \
            or ready_high < low:
        return None
    at = low + (min(high, ready_high) - low) * min(1.0, max(0.0, draw()))
    start = max(at, ready_low)
    done = start + (ready_high - start) * min(1.0, max(0.0, draw()))
    return round(at, 1), round(max(done, at), 1)


def encode(p: Point) -> str:
    """As the store keeps a point: ``shown:ready`` to a tenth of a second."""
    return f"{p[0]:.1f}:{p[1]:.1f}"


def decode(raw: Iterable[str | bytes]) -> list[Point]:
    """What :func:`encode` wrote, in the stored order; unreadable entries are left out."""
    out: list[Point] = []
    for item in raw:
        text = item.decode() if isinstance(item, bytes) else item
        try:
            shown, ready = (float(x) for x in text.split(":"))
        except ValueError:
            continue
        if math.isfinite(shown) and math.isfinite(ready) and 0 <= shown <= ready:
            out.append((shown, ready))
    return out


def counts_after(points: Sequence[Point], after: float) -> tuple[float, ...] | None:
    """A histogram (schedule.py's buckets) of the ready times of the points whose track
    showed after ``after`` seconds; None with fewer than :data:`ENOUGH` of them."""
    later = [ready for shown, ready in points if shown > after]
    if len(later) < ENOUGH:
        return None
    counts = [0.0] * schedule.BUCKETS
    for ready in later:
        counts[schedule.bucket_of(ready)] += 1.0
    return tuple(counts)


def next_delay(points: Sequence[Point], elapsed: float, *, unseen_at: float, weight: float, target: float,
               initial: float, maximum: float, remaining: float = math.inf,
               rng: Callable[[], float] | None = None, cold: float | None = None) -> float | None:
    """Seconds until the next look of a generation ``elapsed`` seconds after its POST
    whose track was not listed at ``unseen_at`` (its latest look): planned from the points
    that showed later, at ``weight`` polls per late track (:func:`price`). None when too
    few points showed later: the caller plans from the site's histogram. ``cold``: the
    wait past everything those points observed (schedule.next_delay)."""
    counts = counts_after(points, unseen_at)
    if counts is None:
        return None
    return schedule.next_delay(counts, elapsed, 0, target=target, initial=initial, maximum=maximum,
                               remaining=remaining, rng=rng or (lambda: 1.0), running_at=unseen_at,
                               weight=weight, cold=cold)


def replay_late_share(points: Sequence[Point], stats: Sequence[float] | None, weight: float, *, target: float,
                      initial: float, maximum: float) -> float:
    """The share of ``points`` a policy at price ``weight`` sees later than ``target``:
    each look before the track shows is planned from the points that showed later
    (:func:`next_delay`), each look after it from the site's histogram ``stats``, as
    the pipeline places them (without jitter)."""
    # Looks before the track shows are the same for every point: one chain of times. The
    # first is planned from the histogram, as the pipeline plans it (module docstring).
    t = schedule.next_delay(stats, 0.0, 0, target=target, initial=initial, maximum=maximum, rng=lambda: 1.0,
                            weight=weight)
    chain = [t]
    while len(chain) < 1000:
        delay = next_delay(points, t, unseen_at=t, weight=weight, target=target, initial=initial, maximum=maximum)
        if delay is None:
            break
        t += delay
        chain.append(t)
    late = 0
    for shown, ready in points:
        seen = next((c for c in chain if c >= shown), None)
        if seen is None:  # past the chain: the site's plan, from its last look
            seen = chain[-1] if chain else 0.0
        t = seen
        while t < ready:
            t += schedule.next_delay(stats, t, 0, target=target, initial=initial, maximum=maximum,
                                     rng=lambda: 1.0)
        late += t - ready > target
    return late / len(points) if points else 0.0


def price(points: Sequence[Point], stats: Sequence[float] | None, *, target: float, initial: float,
          maximum: float) -> float | None:
    """The smallest price of a late track (in polls, to a few per cent, and no lower than
    a quarter of the histogram's own) at which the conditioned policy sees all but 5 %
    of ``points`` within ``target`` (:func:`replay_late_share`). None while ``stats`` is
    cold or with fewer than :data:`ENOUGH` points: the caller plans from the histogram
    alone."""
    if len(points) < ENOUGH or not schedule.is_warm(stats):
        return None
    allowance = schedule.late_allowance(len(points))

    def meets(weight: float) -> bool:
        return replay_late_share(points, stats, weight, target=target, initial=initial,
                                 maximum=maximum) <= allowance

    low = schedule.plan_weight(stats, target=target, initial=initial, maximum=maximum) / 4
    high = low * 4
    while not meets(high):
        low, high = high, high * 2
        if high > 1e6:
            return high
    for _ in range(5):
        middle = (low + high) / 2
        if meets(middle):
            high = middle
        else:
            low = middle
    return high
