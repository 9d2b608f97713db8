"""Shared fixtures: one workcell per test module, reset before each test that uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from magma_ros.sim import THIRD_PERSON_CAMERA, WRIST_CAMERA, Workcell, WorkcellConfig


@pytest.fixture(scope="module")
def shared_cell() -> Iterator[Workcell]:
    cell = Workcell(WorkcellConfig(cameras=(THIRD_PERSON_CAMERA, WRIST_CAMERA)))
    yield cell
    cell.close()


@pytest.fixture
def cell(shared_cell: Workcell) -> Workcell:
    """The module's workcell, back at seed 0, time 0, arm home, servo unpaused."""
    shared_cell.reset(0)
    return shared_cell
