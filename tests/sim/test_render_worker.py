"""Rendering in a process of its own: the same pixels as the simulator's own render, one look at a time."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from magma_ros.sim import THIRD_PERSON_CAMERA, WRIST_CAMERA, Workcell, WorkcellConfig
from magma_ros.sim.render_detail import arm_urdf_for
from magma_ros.sim.render_worker import RenderWorker, RenderWorkerError
from magma_ros.sim.workcell import SceneLook

CAMERA = dataclasses.replace(THIRD_PERSON_CAMERA, width=160, height=120)
CONFIG = WorkcellConfig(seed=5, cameras=(CAMERA, WRIST_CAMERA), arm_urdf=arm_urdf_for("low"))


def wait(worker: RenderWorker, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rendered = worker.poll(0.01)
        if rendered is not None:
            return rendered
    raise AssertionError("no frames back")


@pytest.fixture(scope="module")
def worker():  # type: ignore[no-untyped-def]
    with RenderWorker(CONFIG) as w:
        yield w


def test_frames_from_the_render_process_equal_the_simulators_own(worker: RenderWorker) -> None:
    with Workcell(CONFIG) as cell:
        cell.reset(11)   # another layout than the worker was built with: the look carries the cubes
        cell.command_twist([0.1, 0.05, -0.08], [0.0, 0.0, 0.4], cell.sim_time, cell.base_frame)
        cell.command_gripper(0.01)
        for _ in range(3):
            cell.step(0.3)
            look = cell.look()
            assert worker.submit(look, (CAMERA.name, WRIST_CAMERA.name), tag="t")
            assert worker.busy and not worker.submit(look, (CAMERA.name,))   # one look at a time
            rendered = wait(worker)
            assert not worker.busy and rendered.tag == "t" and rendered.look == look and rendered.render_s > 0
            for frame, name in zip(rendered.frames, (CAMERA.name, WRIST_CAMERA.name), strict=True):
                direct = cell.render(name)
                assert frame.stamp == look.sim_time == direct.stamp
                assert np.array_equal(frame.rgb, direct.rgb), name
                np.testing.assert_array_equal(frame.depth, direct.depth)
                assert frame.frame_id == direct.frame_id


def test_a_bad_look_is_an_error_and_the_worker_goes_on(worker: RenderWorker) -> None:
    with Workcell(CONFIG) as cell:
        look = cell.look()
    assert worker.submit(dataclasses.replace(look, joints=look.joints[:3]), (CAMERA.name,))
    with pytest.raises(RenderWorkerError, match="joints"):
        wait(worker)
    assert worker.submit(dataclasses.replace(look, cubes=(("purple", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)),)),
                         (CAMERA.name,))
    with pytest.raises(RenderWorkerError, match="purple"):
        wait(worker)
    assert worker.submit(look, ("no_such_camera",))
    with pytest.raises(RenderWorkerError):
        wait(worker)
    assert worker.submit(look, (CAMERA.name,))
    assert wait(worker).frames[0].rgb.shape == (120, 160, 3)


def test_a_dead_render_process_is_reported_not_waited_for() -> None:
    worker = RenderWorker(CONFIG)
    with Workcell(CONFIG) as cell:
        look: SceneLook = cell.look()
    worker._process.kill()
    worker._process.join(timeout=10)
    with pytest.raises(RenderWorkerError, match="died"):
        worker.submit(look, (CAMERA.name,))
    worker.close()
    worker.close()   # twice is fine
    with pytest.raises(RenderWorkerError, match="closed"):
        worker.submit(look, (CAMERA.name,))
