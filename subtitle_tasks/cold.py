"""When to look while a site's timing is not known: never later than the official client.

Pure functions, beside schedule.py: nothing here sleeps, reads a clock or touches Redis.

Most sites are cold for ever (a shop that subtitles a few videos a week never gathers
enough generations to learn from), and every site starts cold, usually with a batch
(a sweep, a bulk upload). So the schedule a site gets before it has learned anything
is the one most users see, and it must not lose to DatoCMS's own client, which waits
1 s, 2 s, 3 s, ... between job-result GETs and then the same again between track-list
GETs. This one keeps the official client's pace before the track shows and beats it
after, with what our looks know and its looks do not:

* **Before the track shows**, looks come at the official client's times (``unit``,
  then 2, 3, ... units apart, counted from the POST), so a job's end is seen no later.
  They look in the upload's track list, which shows the new track with its current
  status: a track already ready when its job's end is seen is seen at that look, where
  the official client needs one more GET a second later. Every :data:`JOB_RESULT_EVERY`
  th look asks the job result instead, since only it can tell that a job failed.
* **Once the track is listed and preparing**, looks come one ``target`` apart (the
  delay within which 95 % of ready tracks should be seen, SUBTITLE_TASKS_POLL_TARGET):
  a track that turns ready between two looks is seen within the target, and a long
  preparing costs a look per target instead of the official client's restart at 1 s,
  2 s, 3 s, ... After a job result (which shows the track as the job left it, not as
  it is) the next look comes one ``unit`` later, as the official client's does.

Gaps stay within ``initial``..``maximum`` as every schedule's do. Past everything a
warm site has observed (schedule.horizon) the learned plan hands back to this one:
a generation slower than any seen is exactly where the site knows nothing.
"""

from __future__ import annotations

import math

__all__ = ["JOB_RESULT_EVERY", "asks_job_result", "job_delay", "official_gap", "track_delay"]

JOB_RESULT_EVERY = 3  # one look in three asks the job result: a failed job is told within three looks


def official_gap(elapsed: float, unit: float = 1.0) -> float:
    """The official client's wait at ``elapsed`` seconds after its POST: it looks at 1, 3,
    6, 10, ... units (n(n+1)/2), so this is the time to the first of those after ``elapsed``."""
    if unit <= 0 or not math.isfinite(unit):
        raise ValueError(f"unit must be positive and finite, got {unit!r}")
    n = max(0.0, elapsed) / unit
    k = math.floor((math.sqrt(8 * n + 1) - 1) / 2) + 1  # the first k with k(k+1)/2 > n
    while k * (k + 1) / 2 <= n:  # floating point at an exact look time
        k += 1
    return (k * (k + 1) / 2 - n) * unit


def job_delay(elapsed: float, *, initial: float, maximum: float) -> float:
    """The wait before the next look of a generation whose track has not shown yet,
    ``elapsed`` seconds after its POST: the official client's (:func:`official_gap`, in
    units of ``initial``), capped at ``maximum``."""
    return min(maximum, max(initial, official_gap(elapsed, initial)))


def track_delay(*, target: float, initial: float, maximum: float, from_job_result: bool = False) -> float:
    """The wait before the next look of a track listed as preparing: one ``target``; one
    ``initial`` when the last look was a job result (the track as its job left it)."""
    if from_job_result:
        return initial
    return min(maximum, max(initial, target))


def asks_job_result(looks: int) -> bool:
    """Whether the look after ``looks`` looks without the track asks the job result."""
    return looks % JOB_RESULT_EVERY == JOB_RESULT_EVERY - 1
