"""Task families with language instructions, and their success criteria.

Two families, one instruction per episode:

- ``reach``: "reach the {color} cube": the gripper TCP within ``reach_tolerance`` (3 cm) of
  the point ``reach_height`` (5 cm) above the cube's centre;
- ``pick``: "pick up the {color} cube": the cube raised ``lift_height`` (5 cm) above where it
  started, held between both fingers, for ``hold_steps`` consecutive control steps.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from magma_ros.sim.config import CUBE_COLORS
from magma_ros.sim.errors import TaskError
from magma_ros.sim.workcell import Workcell


class TaskFamily(str, enum.Enum):
    REACH = "reach"
    PICK = "pick"


INSTRUCTIONS: dict[TaskFamily, str] = {
    TaskFamily.REACH: "reach the {color} cube",
    TaskFamily.PICK: "pick up the {color} cube",
}
DEFAULT_MAX_STEPS: dict[TaskFamily, int] = {TaskFamily.REACH: 80, TaskFamily.PICK: 150}
"""Control steps (10 Hz) per episode; the expert needs about half of each."""


@dataclass(frozen=True)
class SuccessCriteria:
    """Thresholds of the success tests (metres, control steps)."""

    reach_tolerance: float = 0.03
    reach_height: float = 0.05
    lift_height: float = 0.05
    hold_steps: int = 5

    def __post_init__(self) -> None:
        for name in ("reach_tolerance", "reach_height", "lift_height"):
            value = getattr(self, name)
            if not 0.0 < value <= 0.5:
                raise TaskError(f"success criteria: {name} must be in (0, 0.5] m, got {value}")
        if not 1 <= self.hold_steps <= 1000:
            raise TaskError(f"success criteria: hold_steps must be in [1, 1000], got {self.hold_steps}")


@dataclass(frozen=True)
class Task:
    """One task: family, target cube colour and step budget; ``instruction`` is its sentence."""

    family: TaskFamily
    color: str
    max_steps: int
    criteria: SuccessCriteria = SuccessCriteria()

    def __post_init__(self) -> None:
        if self.color not in CUBE_COLORS:
            raise TaskError(f"unknown cube colour {self.color!r}; known: {', '.join(CUBE_COLORS)}")
        if not 1 <= self.max_steps <= 100_000:
            raise TaskError(f"max_steps must be in [1, 100000], got {self.max_steps}")

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS[self.family].format(color=self.color)


def make_task(family: str | TaskFamily, color: str, max_steps: int | None = None) -> Task:
    """A task from a family name (``"reach"`` / ``"pick"``) and a colour."""
    try:
        family = TaskFamily(family)
    except ValueError as err:
        names = ", ".join(f.value for f in TaskFamily)
        raise TaskError(f"unknown task family {family!r}; known: {names}") from err
    return Task(family, color, DEFAULT_MAX_STEPS[family] if max_steps is None else max_steps)


def task_for_seed(family: str | TaskFamily, seed: int, colors: tuple[str, ...] = ("red", "green", "blue")) -> Task:
    """The task an evaluation runs for ``seed``: colours cycle with the seed."""
    if not colors:
        raise TaskError("task_for_seed needs at least one colour")
    return make_task(family, colors[seed % len(colors)])


class SuccessTracker:
    """Evaluates a task's success after each control step (keeps the hold counter)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self._held = 0

    def reset(self) -> None:
        self._held = 0

    def reach_error(self, cell: Workcell) -> float:
        """Distance (m) from the TCP to the point ``reach_height`` above the target cube."""
        target = cell.cube_pose(self.task.color).position + np.array([0.0, 0.0, self.task.criteria.reach_height])
        return float(np.linalg.norm(cell.ee_pose().position - target))

    def lift(self, cell: Workcell) -> float:
        """How far (m) the target cube is above where it started."""
        color = self.task.color
        return float(cell.cube_pose(color).position[2] - cell.initial_cube_pose(color).position[2])

    def update(self, cell: Workcell) -> bool:
        """True once the task is achieved (call once per control step)."""
        criteria = self.task.criteria
        if self.task.family is TaskFamily.REACH:
            return self.reach_error(cell) <= criteria.reach_tolerance
        lifted = self.lift(cell) >= criteria.lift_height and cell.is_grasped(self.task.color)
        self._held = self._held + 1 if lifted else 0
        return self._held >= criteria.hold_steps
