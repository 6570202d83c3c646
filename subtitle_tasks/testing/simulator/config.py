"""How the simulator behaves: ``SimulatorConfig`` and the checks that keep it valid.

Changed on a running simulator with ``Simulator.configure()`` or ``POST /_simulator/config``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .faults import FAULT_NAMES

BODY_TYPES = ("upload_track", "subtitles_generation")


def _no_faults() -> dict[str, float]:
    return dict.fromkeys(FAULT_NAMES, 0.0)


@dataclass
class SimulatorConfig:
    """How the simulator behaves. Every duration is in (float) seconds."""

    job_seconds: float = 2.0          # POST accepted -> job result available
    preparing_seconds: float = 3.0    # job done -> track ready (or errored)
    rate_limit: int = 60              # requests per token per rate_window
    rate_window: float = 3.0
    token: str | None = None          # None: any non-empty bearer token is accepted
    insist_type: str | None = None    # None: both BODY_TYPES are accepted
    environments: frozenset[str] | None = None  # None: any X-Environment is accepted
    immutable_environments: frozenset[str] = frozenset()  # sandboxes whose tracks cannot change
    faults: dict[str, float] = field(default_factory=_no_faults)  # name -> probability
    slow_seconds: float = 2.0         # delay added by the "slow" fault
    seed: int | None = None           # seeds the fault draws

    def __post_init__(self) -> None:
        for name in ("job_seconds", "preparing_seconds", "slow_seconds", "rate_window"):
            _require_non_negative(name, getattr(self, name))
        if not _is_int(self.rate_limit) or self.rate_limit < 1:
            raise ValueError("rate_limit must be an integer >= 1")
        if self.rate_window == 0:
            raise ValueError("rate_window must be > 0")
        if self.token is not None and (not isinstance(self.token, str) or not self.token):
            raise ValueError("token must be a non-empty string or None")
        if self.insist_type not in (None, *BODY_TYPES):
            raise ValueError(f"insist_type must be None or one of {BODY_TYPES}")
        if self.environments is not None:
            self.environments = _environment_set(self.environments)
        self.immutable_environments = _environment_set(self.immutable_environments or ())
        self.faults = _complete_faults(self.faults)
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError("seed must be an integer or None")

    def accepted_types(self) -> tuple[str, ...]:
        return (self.insist_type,) if self.insist_type else BODY_TYPES

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view; the token itself is never shown."""
        view = dataclasses.asdict(self)
        view["token"] = None if self.token is None else "<set>"
        view["environments"] = None if self.environments is None else sorted(self.environments)
        view["immutable_environments"] = sorted(self.immutable_environments)
        return view


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_non_negative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0")


def _environment_set(environments: Iterable[str]) -> frozenset[str]:
    if isinstance(environments, str):
        raise ValueError("environments must be a collection of names, not one string")
    names = frozenset(environments)
    if not all(isinstance(name, str) and name for name in names):
        raise ValueError("environments must be non-empty strings")
    return names


def _complete_faults(faults: dict[str, float] | None) -> dict[str, float]:
    complete = _no_faults()
    for name, probability in (faults or {}).items():
        if name not in complete:
            raise ValueError(f"unknown fault {name!r}; known faults: {', '.join(FAULT_NAMES)}")
        _require_non_negative(f"faults[{name!r}]", probability)
        if probability > 1:
            raise ValueError(f"faults[{name!r}] must be a probability between 0 and 1")
        complete[name] = float(probability)
    return complete
