"""When to poll next, learned from how long a site's subtitles actually take.

Pure functions: nothing here sleeps, reads a clock or touches Redis. The store keeps
one small histogram per site and the pipeline hands it in.

What is learned. How long a generation takes from its POST being accepted to its
track being ``ready`` (or ``errored``): one duration, job and preparing together,
because that is the only moment the app waits for. A histogram of observed durations
over fixed log-spaced buckets (:data:`BUCKETS` of them, each :data:`RATIO` times as
wide as the one before, from :data:`BASE` seconds; the first holds everything shorter,
the last everything longer). Each observation first multiplies every count by
``decay`` and then adds 1, so the histogram weighs the last ``1 / (1 - decay)``
generations (100 with :data:`DECAY`) and follows a change within about that many. It
assumes nothing about the shape of the distribution.

Censoring. A poll only tells "ready between the previous look and this one", so an
observation is that interval, its weight spread evenly over it (:func:`spread`).

Where polls go. The caller names a ``target``: how late after a track becomes ready a
poll may see it, for :data:`QUANTILE` (95 %) of tracks. Given the histogram (its CDF
``F``, linear inside a bucket), the schedule is the one with the fewest expected polls
whose planned share of tracks seen later than ``target`` is at most 5 %: a small
dynamic program over a grid of candidate times (bucket edges, each bucket split in at
least three, in steps of at most a sixth of the target, :data:`GRID` points at most)
minimises ``E[polls] + weight * P(seen late)``, and ``weight`` is found by bisection
as the smallest that keeps the planned late share within 5 %. (Over a span longer
than GRID sixths of the target, the grid's steps, and so the gaps, are coarser than
the target: a 6 s target is kept up to a span of 400 s of observed durations.)
So the first poll lands near the low end of the observed durations, polls are dense
where tracks become ready and sparse or absent where none do, and the 5 % the target
lets go is spent where it saves the most polls. No two polls are closer than
``initial`` (SUBTITLE_TASKS_POLL_INITIAL) or further apart than ``maximum``
(SUBTITLE_TASKS_POLL_MAX); past the last observed duration the gaps grow geometrically
(:data:`GROWTH`), capped at ``maximum``. A poll may come up to :data:`JITTER` early,
never late; none is scheduled past the deadline.

Re-planning. Each step asks for the next poll only, conditioned on what is known: the
track was not ready at ``running_at`` seconds (the latest look); the dynamic
program's future costs are those of the plan made from the POST. A caller that knows
more than "not ready" (unseen.py: the track is not even listed yet) hands in a
histogram of its own and the price of a late track it found for its whole policy
(``weight``).

Cold start. Until a histogram holds :data:`WARM` (decayed) observations, and past
the longest time it observed, the caller's cold schedule applies (the pipeline's is
cold.py: never later than the official client); without one, the schedule before
learning, :func:`~subtitle_tasks.backoff.capped_exponential`.
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
    "BANDS",
    "BASE",
    "BUCKETS",
    "CONDITION_WARM",
    "DECAY",
    "GRID",
    "GROWTH",
    "JITTER",
    "MAX_PARTS",
    "NARROWER",
    "PRUNE",
    "QUANTILE",
    "RATIO",
    "READY",
    "SAMPLE_MARGIN",
    "WARM",
    "bucket_of",
    "cdf",
    "decode",
    "duration_band",
    "encode",
    "horizon",
    "informative",
    "is_warm",
    "late_allowance",
    "lower_edge",
    "next_delay",
    "observation",
    "observed",
    "plan_weight",
    "planned_late_share",
    "poll_times",
    "quantile",
    "spread",
    "timing_name",
    "update",
    "upper_edge",
    "valid_duration",
    "weight",
]

BASE = 0.5       # seconds: the first bucket holds [0, BASE)
RATIO = 1.15     # each bucket 15 % wider than the one before: ~5 % resolution after splitting in 3
BUCKETS = 76     # the last bucket starts at BASE * RATIO ** 74 (about 4.3 h): past the default deadline
DECAY = 0.99     # per observation: the histogram weighs about the last 100 generations
WARM = 30.0      # decayed observations before the learned schedule replaces the cold one
GROWTH = 1.5     # past the learned tail: the next poll at 1.5x the time spent so far
JITTER = 0.1     # a poll may come up to 10 % early, so generations started together drift apart
GRID = 400       # at most about this many candidate poll times in a plan (it costs O(GRID^2) at worst)
MAX_PARTS = 24   # and at most this many inside one bucket
PRUNE = 1e-3     # counts below this are dropped: they weigh nothing and would only lengthen the key

QUANTILE = 0.95  # the share of tracks the target delay applies to
READY = "ready"  # the timing histogram's name: POST accepted -> track ready (or errored)


# Conditioning on the upload's duration, when the caller gives it (request_subtitles'
# upload_duration): each generation is also learned in its band's histogram, which is
# used instead of the site's once it holds CONDITION_WARM observations and reads as
# telling more than the site's (informative()).
BANDS = 8               # 0: under a minute; then one per doubling; the last: 64 min and over
CONDITION_WARM = 30.0   # a band's quantiles from fewer draws look narrower by chance alone
NARROWER = 0.75         # a band whose middle 90 % spans at most this share of the site's


def duration_band(seconds: object) -> int | None:
    """The upload-duration band of a video ``seconds`` long; None without a usable duration."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds <= 0:
        return None
    if seconds < 60:
        return 0
    return min(BANDS - 1, 1 + int(math.log2(seconds / 60)))


def timing_name(band: int | None) -> str:
    """The name the store keeps a histogram under: the site's, or one duration band's."""
    return READY if band is None else f"{READY}@{band}"


def informative(part: Sequence[float] | None, whole: Sequence[float] | None) -> bool:
    """Whether one band's histogram tells more about its generations than the site's:
    it holds CONDITION_WARM observations and its middle 90 % spans at most NARROWER of
    the site's. Read off the fleet's own data: where the upload's duration does not
    predict the time, a band's histogram is the site's own with noise and about as
    wide. (A band's median alone is no evidence: a band learns from a fraction of the
    generations, so under drift its histogram is older than the site's and its median
    lags for that reason.)"""
    if weight(part) < CONDITION_WARM or not is_warm(whole):
        return False
    span = quantile(part, 0.95) - quantile(part, 0.05)
    return span <= NARROWER * (quantile(whole, 0.95) - quantile(whole, 0.05))


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


def spread(low: float, high: float) -> list[tuple[int, float]]:
    """One observation known only to lie within [low, high], as (bucket, weight) pairs
    summing to 1: shared among the buckets the interval overlaps in proportion to the
    overlap (uniform inside it). A point (high <= low) goes whole to its bucket.

    Why not the midpoint: the schedule puts polls at the same places for every
    generation of a site, so midpoints would pile all the mass of a gap onto one spot
    and leave the stretch just after each poll looking empty, where the next plan would
    then leave a wide gap. Spreading keeps what the polls could not tell apart smooth.
    """
    low = max(0.0, low)
    if not high > low:
        return [(bucket_of(low), 1.0)]
    pairs: list[tuple[int, float]] = []
    for index in range(bucket_of(low), bucket_of(high) + 1):
        top = math.inf if index == BUCKETS - 1 else upper_edge(index)
        overlap = min(high, top) - max(low, lower_edge(index))
        if overlap > 0:
            pairs.append((index, overlap))
    total = sum(w for _, w in pairs)
    return [(index, w / total) for index, w in pairs] if total > 0 else [(bucket_of(low), 1.0)]


def observation(seconds: float, until: float | None = None) -> list[tuple[int, float]]:
    """What one observation adds to a histogram, as (bucket, share) pairs: +1 in the
    bucket of ``seconds``, or spread over [seconds, until] (:func:`spread`). Empty when
    either bound is negative or not finite: such an observation changes nothing."""
    if not valid_duration(seconds) or (until is not None and not valid_duration(until)):
        return []
    return spread(seconds, seconds if until is None else until)


def update(stats: Sequence[float] | None, seconds: float, decay: float = DECAY,
           until: float | None = None) -> list[float]:
    """The histogram after one more observation: every count times ``decay`` (counts
    below :data:`PRUNE` dropped), then +1 in the bucket of ``seconds``, or spread over
    [seconds, until] (:func:`spread`) when the observation is an interval. A duration
    that is negative or not finite changes nothing.

    The store's Lua script does the same arithmetic (``record_timing``).
    """
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be within (0, 1], got {decay!r}")
    counts = _counts(stats)
    added = observation(seconds, until)
    if not added:
        return counts
    counts = [c * decay for c in counts]
    counts = [c if c >= PRUNE else 0.0 for c in counts]
    for index, share in added:
        counts[index] += share
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


# A plan from n observations aims at a late share of 5 % x n / (n + SAMPLE_MARGIN). Batch
# runs of the wide shape after 60 generations (24 seeds): p95 6.96 s with no margin against
# the official 6.94 s, 5.96 s with 60 and 5.92 s with 120, at the same 0.51x requests.
SAMPLE_MARGIN = 60.0


def late_allowance(observations: float) -> float:
    """The share of tracks a plan made from ``observations`` may see later than the target:
    1 - QUANTILE, less a margin for a small sample. A plan fitted to few observations
    meets its allowance on them and misses it on the next ones (it spends the allowance
    exactly where its sample happened to be thin), so it aims lower in proportion:
    ``(1 - QUANTILE) * n / (n + SAMPLE_MARGIN)``."""
    n = max(0.0, observations)
    return (1.0 - QUANTILE) * n / (n + SAMPLE_MARGIN)


# -- the optimal schedule ------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    times: tuple[float, ...]   # candidate poll times, seconds since the POST
    done: tuple[float, ...]    # F at each
    late: tuple[float, ...]    # F(t - target) at each: what a poll at t sees later than the target
    weight: float              # what one late track costs, in polls (the Lagrange multiplier)
    future: tuple[float, ...]  # optimal cost from a poll at each (not done there) onwards, unnormalised
    miss: float                # the planned share of tracks seen later than the target

    def at(self, t: float) -> float:
        """F(t) for any t (F is linear between grid points, 0 before the data)."""
        return _interpolate(self.times, self.done, t)


def _interpolate(times: Sequence[float], done: Sequence[float], t: float) -> float:
    if t <= times[0]:
        return 0.0
    if t >= times[-1]:
        return 1.0
    k = bisect.bisect_right(times, t) - 1
    return done[k] + (done[k + 1] - done[k]) * (t - times[k]) / (times[k + 1] - times[k])


def _grid(counts: Sequence[float], min_gap: float, target: float) -> tuple[list[float], list[float]]:
    """Candidate times over the data's span and F at each: bucket edges, each bucket split
    in at least three (about 5 % steps) and into steps of at most a sixth of the target
    (so that a gap just under it is a candidate), but never into steps shorter than a
    quarter of min_gap, and no more than GRID points in all."""
    total = sum(counts)
    used = [i for i, c in enumerate(counts) if c > 0]
    step = max(target / 6, min_gap / 4, (upper_edge(used[-1]) - lower_edge(used[0])) / GRID)
    times: list[float] = []
    done: list[float] = []
    below = sum(counts[:used[0]]) / total
    for index in range(used[0], used[-1] + 1):
        low, high = lower_edge(index), upper_edge(index)
        share = counts[index] / total
        parts = max(3, min(MAX_PARTS, math.ceil((high - low) / step))) if step > 0 else 3
        for part in range(parts):
            t = low + (high - low) * part / parts
            if not times or t - times[-1] >= min_gap / 4:
                times.append(t)
                done.append(below + share * part / parts)
        below += share
    times.append(upper_edge(used[-1]))
    done.append(1.0)
    return times, done


def _best(plan_times: Sequence[float], done: Sequence[float], late: Sequence[float], future: Sequence[float],
          weight: float, start: int, f: float, t: float, min_gap: float, max_gap: float) -> tuple[float, int]:
    """The best next poll among grid points from ``start`` on, from time ``t`` where the
    track is known not ready (F = f there)."""
    best, choice, last = math.inf, len(plan_times) - 1, len(plan_times) - 1
    for j in range(start, len(plan_times)):
        gap = plan_times[j] - t
        if gap < min_gap and j < last:
            continue
        # Ready within (t, t_j - target]: seen later than the target. The poll itself is
        # made by every generation still waiting at t; counted, as the others, by who
        # is still waiting after it (1 - F(t_j)), the first poll being certain anyway.
        penalty = weight * max(0.0, late[j] - f)
        if penalty >= best:
            break  # the penalty only grows with j and the rest is never negative
        cost = (1.0 - done[j]) + penalty + future[j]
        if cost < best:
            best, choice = cost, j
        if gap > max_gap:
            break  # one candidate past max_gap is kept: the caller cuts the wait to max_gap
    return best, choice


def _induct(times: list[float], done: list[float], late: list[float], weight: float, min_gap: float,
            max_gap: float) -> tuple[list[float], float]:
    """Backward induction for one weight; returns the future costs and the planned miss
    share of the schedule from the POST on."""
    n = len(times)
    future = [0.0] * n
    choice = [n - 1] * n
    for i in range(n - 2, -1, -1):
        future[i], choice[i] = _best(times, done, late, future, weight, i + 1, done[i], times[i], min_gap,
                                     max_gap)
    _, j = _best(times, done, late, future, weight, 0, 0.0, 0.0, min_gap, max_gap)
    miss, f = max(0.0, late[j]), done[j]
    while j < n - 1:
        nxt = choice[j]
        miss += max(0.0, late[nxt] - f)
        f, j = done[nxt], nxt
    return future, miss


def _candidates(counts: tuple[float, ...], target: float,
                min_gap: float) -> tuple[list[float], list[float], list[float]]:
    """The grid a plan chooses from (_grid): times, F and F(t - target) at each."""
    times, done = _grid(counts, min_gap, target)
    late = [_interpolate(times, done, t - target) for t in times]
    return times, done, late


@lru_cache(maxsize=512)
def _priced_plan(counts: tuple[float, ...], target: float, min_gap: float, max_gap: float, weight: float) -> _Plan:
    """The fewest expected polls plus ``weight`` per late track, for a weight the caller
    chose (unseen.py). A cache of its own: these plans come and go with every look."""
    times, done, late = _candidates(counts, target, min_gap)
    future, miss = _induct(times, done, late, weight, min_gap, max_gap)
    return _Plan(tuple(times), tuple(done), tuple(late), weight, tuple(future), miss)


@lru_cache(maxsize=256)
def _plan(counts: tuple[float, ...], target: float, min_gap: float, max_gap: float) -> _Plan:
    """The fewest expected polls that see all but ``1 - QUANTILE`` of the tracks within
    ``target`` of becoming ready: a Lagrangian relaxation (one late track costs ``weight``
    polls), the weight found by bisection as the smallest that keeps the planned miss
    share within the allowance."""
    times, done, late = _candidates(counts, target, min_gap)
    allowance = late_allowance(sum(counts))
    low, high = 0.0, 1.0
    future, miss = _induct(times, done, late, high, min_gap, max_gap)
    while miss > allowance and high < 1e6:
        low, high = high, high * 8
        future, miss = _induct(times, done, late, high, min_gap, max_gap)
    best = (high, future, miss)
    for _ in range(8):  # the weight within a few per cent of the smallest that meets the allowance
        middle = (low + high) / 2
        future, miss = _induct(times, done, late, middle, min_gap, max_gap)
        if miss <= allowance:
            high, best = middle, (middle, future, miss)
        else:
            low = middle
    weight, future, miss = best
    return _Plan(tuple(times), tuple(done), tuple(late), weight, tuple(future), miss)


def _learned_delay(counts: tuple[float, ...], elapsed: float, running_at: float, target: float,
                   min_gap: float, max_gap: float, weight: float | None = None) -> float | None:
    """The plan's next poll; None past everything observed (the caller's fallback then)."""
    if weight is None:
        plan = _plan(counts, target, min_gap, max_gap)
    else:
        plan = _priced_plan(counts, target, min_gap, max_gap, weight)
    if running_at >= plan.times[-1]:
        return None
    # Condition on what is known: not ready at ``running_at`` (usually now; earlier when
    # the last look was a job result, which shows the track as it was when the job ended).
    start = bisect.bisect_right(plan.times, elapsed)
    if start >= len(plan.times):
        return min_gap  # by the data it is ready by now: look at once
    _, j = _best(plan.times, plan.done, plan.late, plan.future, plan.weight, start, plan.at(running_at), running_at,
                 min_gap + elapsed - running_at, max_gap + elapsed - running_at)
    return min(max_gap, max(min_gap, plan.times[j] - elapsed))


def next_delay(stats: Sequence[float] | None, elapsed: float, attempt: int, *, target: float,
               initial: float, maximum: float, remaining: float = math.inf,
               rng: Callable[[], float] = random.random, cold: float | None = None,
               running_at: float | None = None, weight: float | None = None) -> float:
    """Seconds until the next poll of a generation ``elapsed`` seconds after its POST was
    accepted, its track not ready yet.

    ``stats``: the site's learned histogram (None: nothing learned). ``target``: how late
    a poll may see 95 % of tracks become ready. ``attempt``: polls so far in the phase,
    for the cold schedule. ``initial`` is the smallest gap (and the cold schedule's first
    delay), ``maximum`` the largest. ``remaining``: time to the deadline; the result
    never exceeds it. ``running_at``: the latest time (seconds since the POST) the track
    was known not ready, ``elapsed`` if not given. While ``stats`` is cold, and past
    everything it observed, the result is ``cold`` if given (the pipeline gives cold.py's
    schedule), else ``capped_exponential(attempt, initial, maximum)`` while cold and
    geometric growth (:data:`GROWTH`) past it.
    ``weight``: what one late track costs, in polls, when the caller set the price
    (unseen.py); otherwise the plan finds the smallest that meets the target on ``stats``.
    """
    if not is_warm(stats):
        delay = cold if cold is not None else capped_exponential(attempt, initial, maximum, rng=rng)
    else:
        counts = tuple(_counts(stats))
        elapsed = max(0.0, elapsed)
        known = elapsed if running_at is None else min(elapsed, max(0.0, running_at))
        planned = _learned_delay(counts, elapsed, known, max(0.0, float(target)), float(initial), float(maximum),
                                 weight)
        if planned is None:
            # Still running past everything observed: the site knows nothing here, so the
            # cold schedule where the caller has one, else back off geometrically.
            delay = cold if cold is not None else min(maximum, max(initial, (GROWTH - 1) * elapsed))
        else:
            # Early, never late: jitter only shortens the wait, and never below the minimum gap.
            draw = min(1.0, max(0.0, float(rng())))
            delay = max(min(planned, initial), planned * (1 - JITTER * (1 - draw)))
    return max(0.0, min(delay, remaining))


def horizon(stats: Sequence[float] | None) -> float:
    """Seconds past which nothing was observed (the top of the highest non-empty bucket):
    where the learned schedule gives way to geometric backoff. 0.0 with no data."""
    used = [i for i, c in enumerate(_counts(stats)) if c > 0]
    return upper_edge(used[-1]) if used else 0.0


def planned_late_share(stats: Sequence[float] | None, *, target: float, initial: float, maximum: float) -> float:
    """The share of tracks the learned plan expects to see later than ``target`` (at most
    1 - QUANTILE unless the gaps' bounds forbid it); 0.0 while cold. For tests."""
    if not is_warm(stats):
        return 0.0
    return _plan(tuple(_counts(stats)), max(0.0, float(target)), float(initial), float(maximum)).miss


def plan_weight(stats: Sequence[float] | None, *, target: float, initial: float, maximum: float) -> float:
    """What one late track costs, in polls, in the plan made from ``stats`` alone (the
    smallest price that meets the target); 0.0 while cold."""
    if not is_warm(stats):
        return 0.0
    return _plan(tuple(_counts(stats)), max(0.0, float(target)), float(initial), float(maximum)).weight


def poll_times(stats: Sequence[float] | None, *, target: float, initial: float, maximum: float,
               horizon: float) -> list[float]:
    """The whole learned schedule, without jitter: poll times (seconds since the POST) up
    to ``horizon``. For tests and bench/schedule.py's floor; the pipeline asks
    :func:`next_delay` one poll at a time."""
    out: list[float] = []
    t = 0.0
    while True:
        t += next_delay(stats, t, len(out), target=target, initial=initial, maximum=maximum, rng=lambda: 1.0)
        if t > horizon:
            return out
        out.append(t)
