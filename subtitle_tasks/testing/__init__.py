"""Test helpers for code that talks to DatoCMS: a local API simulator and pytest fixtures.

``Simulator`` and ``SimulatorConfig`` are loaded on first use, so importing this package
(as the pytest plugin does in every test session) does not load the simulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Simulator", "SimulatorConfig"]

if TYPE_CHECKING:
    from .simulator import Simulator, SimulatorConfig


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import simulator

        return getattr(simulator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
