"""pytest fixtures that serve the DatoCMS simulator (registered as the ``subtitle_tasks`` plugin).

* ``datocms_simulator``: a started ``Simulator`` with fast timings, stopped after the test.
* ``datocms_simulator_factory``: ``factory(**config_fields)`` starts another one with those
  config fields over the same fast defaults; all of them are stopped after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Fast enough for tests, slow enough that "still running" is observable.
FAST_TIMINGS = {"job_seconds": 0.2, "preparing_seconds": 0.2}


@pytest.fixture
def datocms_simulator_factory() -> Iterator[Callable[..., Any]]:
    from subtitle_tasks.testing.simulator import Simulator, SimulatorConfig

    started: list[Simulator] = []

    def start_simulator(**config_fields: Any) -> Simulator:
        config = SimulatorConfig(**{**FAST_TIMINGS, **config_fields})
        simulator = Simulator(config).start()
        started.append(simulator)
        return simulator

    yield start_simulator
    for simulator in started:
        simulator.stop()


@pytest.fixture
def datocms_simulator(datocms_simulator_factory: Callable[..., Any]) -> Any:
    return datocms_simulator_factory()
