"""Seeded worlds shared by the simulator tests (built once per session, in memory)."""

from __future__ import annotations

import pytest

from simulator.truth import Truth
from simulator.world import World, build_world

SMALL = {"customers": 400, "days": 60, "seed": 11}
LARGE = {"customers": 2500, "days": 60, "seed": 5}  # for rates that need a few thousand rows


@pytest.fixture(scope="session")
def world() -> World:
    return build_world(**SMALL)


@pytest.fixture(scope="session")
def large_world() -> World:
    return build_world(**LARGE)


@pytest.fixture(scope="session")
def truth(world: World) -> Truth:
    return Truth.from_world(world)


@pytest.fixture(scope="session")
def large_truth(large_world: World) -> Truth:
    return Truth.from_world(large_world)
