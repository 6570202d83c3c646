"""Shared fixtures: a real redis-server, the DatoCMS simulator, real celery workers."""

from __future__ import annotations

import pytest

from subtitle_tasks.local_redis import LocalRedis
from subtitle_tasks.testing import Simulator, SimulatorConfig
from tests.support.harness import TOKEN, Harness


@pytest.fixture(scope="session")
def redis_server():
    with LocalRedis(appendonly=True) as server:
        yield server


@pytest.fixture(scope="session")
def simulator():
    with Simulator(SimulatorConfig(job_seconds=0.3, preparing_seconds=0.3, token=TOKEN, seed=7)) as sim:
        yield sim


@pytest.fixture
def sim(simulator):
    """The session simulator, reset to fast defaults before and after the test."""
    defaults = dict(job_seconds=0.3, preparing_seconds=0.3, faults={}, insist_type=None, rate_limit=60, rate_window=3.0,
                    immutable_environments=frozenset())
    simulator.reset()
    simulator.configure(**defaults)
    yield simulator
    simulator.reset()
    simulator.configure(**defaults)


@pytest.fixture
def harness_factory(redis_server, sim, tmp_path):
    made: list[Harness] = []

    def make(**overrides) -> Harness:
        h = Harness(overrides.pop("redis_url", redis_server.url), sim, tmp_path, **overrides)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


@pytest.fixture
def harness(harness_factory):
    return harness_factory()
