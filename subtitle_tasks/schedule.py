"""When to poll next, learned from how long a site's jobs and tracks actually take.

Pure functions: nothing here sleeps, reads a clock or touches Redis. The store keeps
one small histogram per (site, phase) and the pipeline hands it in.

What is learned. For each phase (``job``: POST accepted -> job result 200; ``track``:
job done -> track ``ready``/``errored``) a histogram of observed durations over fixed
log-spaced buckets (:data:`BUCKETS` of them, each :data:`RATIO` times as wide as the one
before, from :data:`BASE` seconds; the first holds everything shorter, the last
everything longer). Each observation first multiplies every count by ``decay`` and
then adds 1, so the histogram weighs the last ``1 / (1 - decay)`` generations (100 with
:data:`DECAY`) and follows a change within about that many. It assumes nothing about
the shape of the distribution.

Censoring. A poll only tells "done between the previous poll and this one", so an
observation is the midpoint of that interval (:func:`observed`), always.

Where polls go. Given the histogram (its CDF ``F``, linear inside a bucket), the time
already spent in the phase and that the phase is not done yet, the next poll time is
the one of an optimal schedule for "one poll costs ``poll_cost`` seconds of detection
delay": a small dynamic program over a grid of candidate times (bucket edges, each
bucket split in three, about 5 % steps) minimises ``poll_cost * E[polls] + E[time from
done to the poll that sees it]``. So the first poll lands near the low end of the
observed durations, polls are dense where the probability of finishing is high and
sparse where it is low (none where nothing finishes), no two polls are closer than
``initial`` (SUBTITLE_TASKS_POLL_INITIAL) or further apart than ``maximum``
(SUBTITLE_TASKS_POLL_MAX), and past the last observed duration the gaps grow
geometrically (:data:`GROWTH`), capped at ``maximum``. A poll may come up to
:data:`JITTER` early, never late; none is scheduled past the deadline.

Cold start. Until a histogram holds :data:`WARM` (decayed) observations the schedule
is the one before learning: :func:`~subtitle_tasks.backoff.capped_exponential`.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .backoff import capped_exponential

__all__ = [
    "BASE", "BUCKETS", "DECAY", "GROWTH", "JITTER", "POLL_COST", "PRUNE", "RATIO", "WARM", "bucket_of", "cdf",
    "decode", "encode", "is_warm", "lower_edge", "next_delay", "observed", "poll_times", "quantile", "update",
    "upper_edge", "valid_duration", "weight",
]

BASE = 0.5       # seconds: the first bucket holds [0, BASE)
RATIO = 1.15     # each bucket 15 % wider than the one before: ~5 % resolution after splitting in 3
BUCKETS = 76     # the last bucket starts at BASE * RATIO ** 74 (about 4.3 h): past the default deadline
DECAY = 0.99     # per observation: the histogram weighs about the last 100 generations
WARM = 10.0      # decayed observations before the learned schedule replaces the cold one
GROWTH = 1.5     # past the learned tail: the next poll at 1.5x the time spent so far
JITTER = 0.1     # a poll may come up to 10 % early, so generations started together drift apart
PRUNE = 1e-3     # counts below this are dropped: they weigh nothing and would only lengthen the key

# What one request is worth in detection delay, per phase, in units of the smallest gap
# (SUBTITLE_TASKS_POLL_INITIAL, 1 s by default), so the policy scales with the settings.
# The job phase's is higher: a job seen late is mostly absorbed by the track's own
# preparing time, which the track phase (its clock starts when the job is estimated
# done) then waits out. Tuned with bench/schedule.py (see bench/README.md).
POLL_COST = {"job": 1.0, "track": 0.5}


def lower_edge(index: int) -> float:
    return 0.0 if index <= 0 else BASE * RATIO ** (index - 1)


def upper_edge(index: int) -> float:
    """A bucket's upper edge; the last, open-ended bucket is read as one RATIO wide."""
    return BASE * RATIO ** index if index < BUCKETS - 1 else lower_edge(index) * RATIO


def bucket_of(seconds: float) -> int:
    if not seconds >= BASE:  # also NaN and negatives
        return 0
    index = 1 + int(math.log(seconds / BASE) / math.log(RATIO))
    # log() rounding can put an exact edge one bucket off; settle it against the edges.
    while index > 1 and seconds < lower_edge(index):
        index -= 1
    while index < BUCKETS - 1 and seconds >= upper_edge(index):
        index += 1
    return min(BUCKETS - 1, index)


def _counts(stats: Sequence[float] | None) -> list[float]:
    """Stats as exactly BUCKETS non-negative counts (a stored layout of another length reads as empty)."""
    if not stats or len(stats) != BUCKETS:
        return [0.0] * BUCKETS
    return [c if c > 0 and math.isfinite(c) else 0.0 for c in map(float, stats)]


def valid_duration(seconds: float) -> bool:
    return isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0


def update(stats: Sequence[float] | None, seconds: float, decay: float = DECAY) -> list[float]:
    """The histogram after one more observation: every count times ``decay`` (counts
    below :data:`PRUNE` dropped), then +1 in the bucket of ``seconds``. A duration that
    is negative or not finite changes nothing.

    The store's Lua script does the same arithmetic (``record_timing``).
    """
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be within (0, 1], got {decay!r}")
    counts = _counts(stats)
    if not valid_duration(seconds):
        return counts
    counts = [c * decay for c in counts]
    counts = [c if c >= PRUNE else 0.0 for c in counts]
    counts[bucket_of(seconds)] += 1.0
    return counts


def encode(stats: Sequence[float] | None) -> str:
    """As the store keeps a histogram: comma-separated counts to 4 significant digits
    (Lua's ``%.4g`` writes the same), trailing empty buckets left out."""
    parts = [f"{c:.4g}" for c in _counts(stats)]
    while parts and parts[-1] == "0":
        parts.pop()
    return ",".join(parts)


def decode(raw: str | bytes | None) -> list[float] | None:
    """What :func:`encode` wrote, as BUCKETS counts; None when absent, empty or unreadable."""
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    if not raw:
        return None
    try:
        values = [float(part) for part in raw.split(",")]
    except ValueError:
        return None
    if len(values) > BUCKETS or not all(math.isfinite(v) and v >= 0 for v in values):
        return None  # another layout (a later version) or damage: start over
    counts = values + [0.0] * (BUCKETS - len(values))
    return counts if sum(counts) > 0 else None


def weight(stats: Sequence[float] | None) -> float:
    return sum(_counts(stats))


def is_warm(stats: Sequence[float] | None, minimum: float = WARM) -> bool:
    return weight(stats) >= minimum


def observed(last_not_done: float, first_done: float) -> float:
    """The duration to learn from a phase that was not done at ``last_not_done`` seconds
    and was done at ``first_done``: the midpoint (the polls only bound it)."""
    low = max(0.0, min(last_not_done, first_done))
    return (low + max(low, first_done)) / 2


def cdf(stats: Sequence[float] | None, seconds: float) -> float:
    """The learned probability that a phase is done within ``seconds`` (0.0 with no data)."""
    counts = _counts(stats)
    total = sum(counts)
    if total <= 0 or seconds <= 0:
        return 0.0
    index = bucket_of(seconds)
    below = sum(counts[:index])
    low, high = lower_edge(index), upper_edge(index)
    inside = counts[index] * min(1.0, (seconds - low) / (high - low))
    return min(1.0, (below + inside) / total)


def quantile(stats: Sequence[float] | None, p: float) -> float:
    """The learned ``p``-quantile of the duration (linear inside a bucket); 0.0 with no data."""
    counts = _counts(stats)
    total = sum(counts)
    if total <= 0:
        return 0.0
    target, below = min(1.0, max(0.0, p)) * total, 0.0
    for index, count in enumerate(counts):
        if count > 0 and below + count >= target:
            low, high = lower_edge(index), upper_edge(index)
            return low + (high - low) * (target - below) / count
        below += count
    return upper_edge(max(i for i, c in enumerate(counts) if c > 0))


# -- the optimal schedule ------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    times: tuple[float, ...]   # candidate poll times, seconds into the phase
    done: tuple[float, ...]    # F at each
    area: tuple[float, ...]    # integral of F from 0 to each
    future: tuple[float, ...]  # optimal cost from a poll at each (not done there) onwards, unnormalised

    def at(self, t: float) -> tuple[float, float]:
        """F(t) and its integral from 0, for any t (F is linear between grid points)."""
        times, done, area = self.times, self.done, self.area
        if t <= times[0]:
            return 0.0, 0.0  # the grid starts where the data does: F is 0 before it
        k = min(bisect.bisect_right(times, t) - 1, len(times) - 2)
        f = done[k] + (done[k + 1] - done[k]) * (t - times[k]) / (times[k + 1] - times[k])
        return f, area[k] + (done[k] + f) / 2 * (t - times[k])


def _grid(counts: list[float], min_gap: float) -> tuple[list[float], list[float]]:
    """Candidate times over the data's span and F at each: bucket edges, each bucket split
    in three (about 5 % steps) but never into steps shorter than a quarter of min_gap."""
    total = sum(counts)
    used = [i for i, c in enumerate(counts) if c > 0]
    times: list[float] = []
    done: list[float] = []
    below = sum(counts[:used[0]]) / total
    for index in range(used[0], used[-1] + 1):
        low, high = lower_edge(index), upper_edge(index)
        share = counts[index] / total
        for part in range(3):
            t = low + (high - low) * part / 3
            if not times or t - times[-1] >= min_gap / 4:
                times.append(t)
                done.append(below + share * part / 3)
        below += share
    times.append(upper_edge(used[-1]))
    done.append(1.0)
    return times, done


@lru_cache(maxsize=256)
def _plan(counts: tuple[float, ...], poll_cost: float, min_gap: float, max_gap: float) -> _Plan:
    """Backward induction: future[i] = min over the next poll j of (delay of what finishes
    in (t_i, t_j]) + poll_cost * P(still running at t_j) + future[j]."""
    times, done = _grid(list(counts), min_gap)
    area = [0.0]
    for k in range(1, len(times)):
        area.append(area[-1] + (done[k] + done[k - 1]) / 2 * (times[k] - times[k - 1]))
    n = len(times)
    future = [0.0] * n
    for i in range(n - 2, -1, -1):
        future[i] = _best(times, done, area, future, i + 1, times[i], done[i], area[i], poll_cost, min_gap,
                          max_gap)[0]
    return _Plan(tuple(times), tuple(done), tuple(area), tuple(future))


def _best(times: Sequence[float], done: Sequence[float], area: Sequence[float], future: Sequence[float], start: int,
          t: float, f: float, a: float, poll_cost: float, min_gap: float, max_gap: float) -> tuple[float, int]:
    """The best next poll among grid points from ``start`` on, from time ``t`` (F = f, area a)."""
    best, choice, last = math.inf, len(times) - 1, len(times) - 1
    for j in range(start, len(times)):
        gap = times[j] - t
        if gap < min_gap and j < last:
            continue
        # E[(t_j - T); t < T <= t_j] = integral of (F(s) - F(t)) ds over (t, t_j]
        cost = area[j] - a - f * gap + poll_cost * (1.0 - done[j]) + future[j]
        if cost < best:
            best, choice = cost, j
        if gap > max_gap:
            break  # one candidate past max_gap is kept: the caller cuts the wait to max_gap
    return best, choice


def _learned_delay(counts: tuple[float, ...], elapsed: float, running_at: float, poll_cost: float,
                   min_gap: float, max_gap: float) -> float:
    plan = _plan(counts, poll_cost, min_gap, max_gap)
    if running_at >= plan.times[-1]:
        # Still running past everything observed: back off geometrically, as before learning.
        return min(max_gap, max(min_gap, (GROWTH - 1) * elapsed))
    # Condition on what is known: running at ``running_at`` (usually now; earlier when a
    # phase's clock started before this step, as the track's does).
    f, a = plan.at(running_at)
    start = bisect.bisect_right(plan.times, elapsed)
    if start >= len(plan.times):
        return min_gap  # by the data it is done by now: look at once
    _, j = _best(plan.times, plan.done, plan.area, plan.future, start, running_at, f, a, poll_cost,
                 min_gap + elapsed - running_at, max_gap + elapsed - running_at)
    return min(max_gap, max(min_gap, plan.times[j] - elapsed))


def next_delay(stats: Sequence[float] | None, elapsed: float, attempt: int, *, poll_cost: float,
               initial: float, maximum: float, remaining: float = math.inf,
               rng: Callable[[], float] = random.random, cold: float | None = None,
               running_at: float | None = None) -> float:
    """Seconds until the next poll of a phase that has run ``elapsed`` seconds, not done yet.

    ``stats``: the phase's learned histogram (None: nothing learned). ``attempt``: polls
    so far in the phase, for the cold schedule. ``initial`` is the smallest gap (and the
    cold schedule's first delay), ``maximum`` the largest. ``remaining``: time to the
    deadline; the result never exceeds it. ``running_at``: the latest time (seconds into
    the phase) the phase was known to be still running, ``elapsed`` if not given. While
    ``stats`` is cold the result is ``cold`` if given, else
    ``capped_exponential(attempt, initial, maximum)``.
    """
    if not is_warm(stats):
        delay = cold if cold is not None else capped_exponential(attempt, initial, maximum, rng=rng)
    else:
        counts = tuple(_counts(stats))
        elapsed = max(0.0, elapsed)
        known = elapsed if running_at is None else min(elapsed, max(0.0, running_at))
        delay = _learned_delay(counts, elapsed, known, float(poll_cost), float(initial), float(maximum))
        # Early, never late: jitter only shortens the wait, and never below the minimum gap.
        draw = min(1.0, max(0.0, float(rng())))
        delay = max(min(delay, initial), delay * (1 - JITTER * (1 - draw)))
    return max(0.0, min(delay, remaining))


def poll_times(stats: Sequence[float] | None, *, poll_cost: float, initial: float, maximum: float,
               horizon: float) -> list[float]:
    """The whole learned schedule of a phase, without jitter: poll times (seconds into the
    phase) up to ``horizon``. For tests, documentation and the CLI; the pipeline asks
    :func:`next_delay` one poll at a time."""
    out: list[float] = []
    t = 0.0
    while True:
        t += next_delay(stats, t, len(out), poll_cost=poll_cost, initial=initial, maximum=maximum,
                        rng=lambda: 1.0)
        if t > horizon:
            return out
        out.append(t)
