"""Episodes over one :class:`~magma_ros.sim.workcell.Workcell`: task, step count, success, a monotonic clock.

ROS-free; ``sim_arm_node`` publishes what this keeps. The workcell's own time restarts
at zero on every reset, so :class:`EpisodeSession` adds an offset: ``clock()`` (what
goes on /clock and in every stamp) only moves forward, across episodes too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from magma_ros.sim.errors import TaskError
from magma_ros.sim.tasks import SuccessTracker, Task, TaskFamily, make_task, task_for_seed
from magma_ros.sim.workcell import Workcell

CLOCK_START_S = 1.0
"""Clock time of the first episode's start (ROS treats time zero as "unset")."""

EPISODE_GAP_S = 1.0
"""Clock time skipped at each reset: longer than every freshness window of the stack (Servo's
0.1 s command timeout, the policy's and the bridge's 0.5 s observation/step ages), so nothing
still answering the previous episode can act in the next one."""


@dataclass(frozen=True)
class EpisodeStatus:
    """Where an episode stands; published as JSON by ``sim_arm_node`` after every control step.

    Attributes:
        episode: index of the episode since the node started (0, 1, ...).
        seed, task, color, instruction: what the episode is about (``task``: reach | pick).
        step: control steps taken; max_steps: the budget.
        success: the task's success test passed (the episode ends there).
        done: the episode is over (success or budget spent); the sim then holds still.
        sim_time: seconds since the episode began; start_time / time: clock seconds of its
            start and of this status (the stamps on every message of the episode).
    """

    episode: int
    seed: int
    task: str
    color: str
    instruction: str
    step: int
    max_steps: int
    success: bool
    done: bool
    sim_time: float
    start_time: float
    time: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EpisodeStatus:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as err:
            raise TaskError(f"not an episode status: {text[:200]!r} ({err})") from err


def choose_task(family: str, seed: int, color: str = "", max_steps: int = 0) -> Task:
    """The task of an episode: ``color`` '' cycles the colours with the seed; ``max_steps`` 0 = default."""
    task = make_task(family, color) if color else task_for_seed(family, seed)
    return make_task(task.family, task.color, max_steps or None)


class EpisodeSession:
    """Episode bookkeeping for a workcell stepped in control periods by its owner."""

    def __init__(self, cell: Workcell, control_period: float) -> None:
        if not 0.0 < control_period <= 1.0:
            raise TaskError(f"control_period must be in (0, 1] s, got {control_period}")
        self.cell = cell
        self.control_period = control_period
        self.episode = -1
        self.offset = CLOCK_START_S
        self.task: Task | None = None
        self.seed = 0
        self.step = 0
        self.success = False
        self._tracker: SuccessTracker | None = None

    def clock(self) -> float:
        """Clock seconds now: monotonic across episodes."""
        return self.offset + self.cell.sim_time

    def to_cell_time(self, clock_time: float) -> float:
        """A clock stamp as workcell time (seconds since the episode's reset)."""
        return clock_time - self.offset

    def reset(self, task: Task, seed: int) -> EpisodeStatus:
        """A new episode: the scene of ``seed``, arm home, the clock :data:`EPISODE_GAP_S` past the last stamp."""
        next_offset = self.clock() + EPISODE_GAP_S if self.episode >= 0 else self.offset
        self.cell.reset(seed)
        self.offset = next_offset
        self.episode += 1
        self.task, self.seed, self.step, self.success = task, seed, 0, False
        self._tracker = SuccessTracker(task)
        return self.status()

    @property
    def done(self) -> bool:
        return self.task is None or self.success or self.step >= self.task.max_steps

    def control_step_done(self) -> EpisodeStatus:
        """Call after each control period of sim time: counts the step and tests success."""
        if self.task is None or self._tracker is None:
            raise TaskError("no episode started")
        if not self.done:
            self.step += 1
            self.success = self._tracker.update(self.cell) or self.success
        return self.status()

    def status(self) -> EpisodeStatus:
        if self.task is None:
            raise TaskError("no episode started")
        return EpisodeStatus(
            episode=self.episode,
            seed=self.seed,
            task=TaskFamily(self.task.family).value,
            color=self.task.color,
            instruction=self.task.instruction,
            step=self.step,
            max_steps=self.task.max_steps,
            success=self.success,
            done=self.done,
            sim_time=round(self.cell.sim_time, 9),
            start_time=round(self.offset, 9),
            time=round(self.clock(), 9),
        )
