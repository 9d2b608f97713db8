"""Render a workcell's cameras in a process of its own, so the simulation never waits for a frame.

pybullet's TinyRenderer holds the GIL for the whole frame (~28 ms for 320x240 on one core). A
simulator that renders in its own thread therefore takes no commands meanwhile: at a 30 Hz camera
it renders 0.88 of every second and Servo twists wait in its queue until they are stale. A
:class:`RenderWorker` keeps a second workcell of the same configuration in a child process; the
simulator hands it a :class:`~magma_ros.sim.workcell.SceneLook` (joint angles and cube poses, a few
hundred bytes) and goes on stepping physics and taking commands; the frames come back stamped with
the look's sim time, a frame period or so later, as from a real camera.

One request at a time: while a frame renders the next one is not asked for (the caller counts it
as skipped), so frames never queue up behind a slow renderer. ROS-free.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from magma_ros.sim.camera import CameraFrame
from magma_ros.sim.config import WorkcellConfig
from magma_ros.sim.errors import SimError
from magma_ros.sim.workcell import SceneLook, Workcell

START_TIMEOUT_S = 60.0


class RenderWorkerError(SimError):
    """The render process failed to start, died, or could not render a look."""


@dataclass(frozen=True)
class RenderedLook:
    """The frames of one look, in the order asked for, and how long rendering took (wall seconds)."""

    look: SceneLook
    frames: tuple[CameraFrame, ...]
    render_s: float
    tag: Any = None


def _serve(connection: Connection, config: WorkcellConfig) -> None:
    """The child process: build the workcell, then render looks until told to stop."""
    try:
        cell = Workcell(config)
    except Exception as err:  # reported to the parent, which raises it
        connection.send(("error", f"could not build the render workcell: {err!r}"))
        return
    connection.send(("ready", None))
    with cell:
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):   # the parent is gone
                return
            if message[0] == "stop":
                return
            _, look, cameras, tag = message
            started = time.perf_counter()
            try:
                cell.show(look)
                frames = tuple(cell.render(name) for name in cameras)   # stamped with look.sim_time (show)
                connection.send(("frames", RenderedLook(look, frames, time.perf_counter() - started, tag)))
            except Exception as err:
                connection.send(("error", f"render failed: {err!r}\n{traceback.format_exc(limit=3)}"))


class RenderWorker:
    """A child process that renders looks of a workcell configured as ``config`` (its cameras included).

    :meth:`submit` returns at once (False while a look is still rendering); :meth:`poll` returns the
    finished frames once, or None. Errors in the child come back as :class:`RenderWorkerError`.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, config: WorkcellConfig, start_timeout_s: float = START_TIMEOUT_S) -> None:
        context = multiprocessing.get_context("spawn")   # never fork a process that runs DDS threads
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, config), name="magma-render", daemon=True)
        self._process.start()
        child.close()
        self._busy = False
        self._closed = False
        if not self._connection.poll(start_timeout_s):
            self.close()
            raise RenderWorkerError(f"the render process did not start within {start_timeout_s:.0f} s")
        kind, detail = self._connection.recv()
        if kind != "ready":
            self.close()
            raise RenderWorkerError(str(detail))

    @property
    def busy(self) -> bool:
        """Whether a look is being rendered now."""
        return self._busy

    def submit(self, look: SceneLook, cameras: tuple[str, ...], tag: Any = None) -> bool:
        """Ask for ``cameras``' frames of ``look`` (``tag`` comes back with them); False while busy."""
        if self._closed:
            raise RenderWorkerError("the render worker is closed")
        if self._busy:
            return False
        self._check_alive()
        self._connection.send(("render", look, tuple(cameras), tag))
        self._busy = True
        return True

    def poll(self, timeout: float = 0.0) -> RenderedLook | None:
        """The frames of the look in flight if they are ready within ``timeout`` seconds, else None."""
        if not self._busy:
            return None
        if not self._connection.poll(timeout):
            self._check_alive()
            return None
        kind, payload = self._connection.recv()
        self._busy = False
        if kind != "frames":
            raise RenderWorkerError(str(payload))
        return payload

    def _check_alive(self) -> None:
        if not self._process.is_alive():
            self._busy = False
            raise RenderWorkerError(f"the render process died (exit code {self._process.exitcode})")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):   # the child may be gone already
            self._connection.send(("stop",))
        self._process.join(timeout=5.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5.0)
        self._connection.close()

    def __enter__(self) -> RenderWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
