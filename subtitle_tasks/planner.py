"""What the learned schedule keeps between steps: one Planner per runtime, so per process.

Production runs every step in a new Pipeline (tasks.py), so anything worth keeping
from one look to the next lives here instead, on the app's runtime (runtime.py), as
its settings and clients do. Two things are:

* **The histogram a site's plans are made from** (:meth:`Planner.histogram`). A plan
  costs about 10 ms of CPU (schedule.py's bisection over a dynamic program) and is
  cached by its histogram, but the stored histogram changes with every generation that
  ends, so planning from it as read would plan anew at nearly every look. The planner
  keeps the histogram it planned from and takes the stored one only once it has moved
  by :data:`MOVED` of its mass (about five generations at the decayed histogram's full
  weight), or turned warm.
* **The price of a late track per site, with the points it was found from**
  (unseen.price): it replays every kept point through the looks it would get, about a
  tenth of a second of CPU at 256 points, so a process finds it again only after
  unseen.RECALIBRATE new points or a new histogram. The looks that condition on those
  points use the same kept points, so their plans are cached too.
  ``price_computations`` counts the replays, so a test can hold the cache to that.
* **The prior a site starts from**: the histograms of the fleet's other sites, pooled
  (each normalised, then summed), read at most once a :data:`PRIOR_TTL` per process.
  A site with fewer than :data:`PRIOR_WEIGHT` observations of its own plans from its
  own plus that prior weighted to make up the difference, so it moves off the prior as
  its own data come in, and is on its own from PRIOR_WEIGHT on.

Knows nothing of Celery. The pipeline hands in the store and the points; nothing here
reads a clock but ``clock`` (monotonic by default, injectable for tests).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import schedule, unseen

log = logging.getLogger("subtitle_tasks.planner")

__all__ = ["MOVED", "PRIOR_TTL", "PRIOR_WEIGHT", "Planner", "blend", "moved", "pool"]

PRIOR_WEIGHT = 30.0  # observations a site's own data must reach before the prior drops out
PRIOR_TTL = 60.0     # seconds a process keeps the pooled prior before reading it again
MOVED = 0.05         # share of a histogram's mass that must move before its plans are made anew


def moved(old: Sequence[float] | None, new: Sequence[float] | None) -> float:
    """How much of its mass a histogram moved: half the L1 distance of the two, each
    scaled to weigh 1 (0.0 the same shape, 1.0 nothing in common or one empty)."""
    old_weight, new_weight = schedule.weight(old), schedule.weight(new)
    if old_weight <= 0 or new_weight <= 0:
        return 0.0 if old_weight == new_weight else 1.0
    return sum(abs(a / old_weight - b / new_weight) for a, b in zip(old or (), new or (), strict=True)) / 2


def pool(histograms: Iterable[Sequence[float] | None]) -> list[float] | None:
    """The warm histograms among ``histograms``, each scaled to weigh 1, summed; None without any."""
    total = [0.0] * schedule.BUCKETS
    found = False
    for stats in histograms:
        if not schedule.is_warm(stats):
            continue
        weight = schedule.weight(stats)
        for index, count in enumerate(stats or ()):
            total[index] += count / weight
        found = True
    return total if found else None


def blend(own: Sequence[float] | None, prior: Sequence[float] | None,
          weight: float = PRIOR_WEIGHT) -> list[float] | None:
    """A site's own histogram plus ``prior`` scaled to what the site lacks of ``weight``
    observations: the prior alone for a new site, nothing of it from ``weight`` on."""
    own_weight = schedule.weight(own)
    prior_weight = schedule.weight(prior)
    if prior is None or prior_weight <= 0 or own_weight >= weight:
        return list(own) if own is not None else None
    share = (weight - own_weight) / prior_weight
    base = list(own) if own is not None and len(own) == schedule.BUCKETS else [0.0] * schedule.BUCKETS
    return [mine + share * theirs for mine, theirs in zip(base, prior, strict=True)]


class Planner:
    def __init__(self, sites: Callable[[], Iterable[str]] = lambda: (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``sites``: the aliases of every site the fleet serves ("" for the default one)."""
        self._sites = sites
        self._clock = clock
        self._lock = threading.Lock()
        # site -> (the histogram and the points its price was found from, the price)
        self._prices: dict[str, tuple[list[float], tuple[unseen.Point, ...], float | None]] = {}
        self._histograms: dict[str, list[float]] = {}  # site -> the histogram its plans come from
        self._priors: dict[str, tuple[float, list[float] | None]] = {}  # site -> (read at, pooled prior)
        self.price_computations = 0

    def histogram(self, site: str, own: list[float] | None, store: Any) -> list[float] | None:
        """The histogram to plan ``site``'s looks from: its ``own`` (as read now), with the
        other sites' prior making up what it lacks of PRIOR_WEIGHT (:meth:`prior`,
        :func:`blend`); and of that, the one planned from before, until it has moved by
        MOVED of its mass or turned warm."""
        stats = blend(own, self.prior(site, store)) if schedule.weight(own) < PRIOR_WEIGHT else own
        if stats is None:
            return None
        kept = self._histograms.get(site)
        if kept is not None and schedule.is_warm(kept) == schedule.is_warm(stats) and moved(kept, stats) < MOVED:
            return kept
        with self._lock:
            self._histograms[site] = stats
        return stats

    def price(self, site: str, points: Sequence[unseen.Point], stats: list[float], *, target: float,
              initial: float, maximum: float) -> tuple[Sequence[unseen.Point], float | None]:
        """unseen.price for ``site`` and the points it was found from, kept until
        RECALIBRATE new points have come in (the newest point it was found from is no
        longer among the newest RECALIBRATE) or ``stats`` is another histogram."""
        cached = self._prices.get(site)
        if cached is not None and cached[0] is stats and cached[1] and cached[1][0] in points[:unseen.RECALIBRATE]:
            return cached[1], cached[2]
        found = unseen.price(points, stats, target=target, initial=initial, maximum=maximum)
        with self._lock:
            self.price_computations += 1
            self._prices[site] = (stats, tuple(points), found)
        return points, found

    def prior(self, site: str, store: Any) -> list[float] | None:
        """The pooled histogram of the other sites' ready times (:func:`pool`), as of at
        most PRIOR_TTL ago; None where no other site is warm."""
        now = self._clock()
        cached = self._priors.get(site)
        if cached is not None and now - cached[0] < PRIOR_TTL:
            return cached[1]
        others = sorted({alias or "" for alias in self._sites()} - {site})
        try:
            pooled = pool(store.timing_stats(alias, schedule.READY) for alias in others)
        except Exception as exc:  # the prior only helps: without it the site starts cold
            log.warning("site %s: could not read the other sites' timing: %s", site or "default", exc)
            pooled = None
        with self._lock:
            self._priors[site] = (now, pooled)
        return pooled
