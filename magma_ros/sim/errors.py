"""Errors raised by the simulated workcell, one root for the whole area.

Everything the sim raises on purpose derives from :class:`SimError`, so a caller (the
``sim_arm_node`` shell, the demo recorder) can catch one type and report it. Subclasses
that signal a bad argument also derive from :class:`ValueError`.
"""

from __future__ import annotations


class SimError(Exception):
    """Root of every error the simulated workcell raises."""


class ConfigError(SimError, ValueError):
    """A configuration value is out of range or inconsistent with another one."""


class DescriptionError(SimError):
    """The workcell URDF description is missing, malformed or lacks a required frame."""


class FrameError(SimError, ValueError):
    """A command or query named a frame the workcell does not know."""


class CommandError(SimError, ValueError):
    """A twist or gripper command is malformed (wrong shape, non-finite, stamp from the future)."""


class SceneError(SimError):
    """The scene could not be built (for example, cubes that cannot be placed without overlap)."""


class TaskError(SimError, ValueError):
    """An unknown task family or colour, or an episode setting out of range."""
