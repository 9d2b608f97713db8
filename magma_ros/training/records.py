"""The training data's on-disk layout and the record types every training job shares.

A dataset directory (written by ``magma-ros dataset build``, read by ``magma-ros train``)::

    DIR/
      dataset.json                 # DATASET_FILE: name, format version, spec, episodes, counts
      dataset_statistics.json      # STATISTICS_FILE: {name: {"action": {q01, q99, mean, std,
                                   #   min, max, mask}}}, the format fine-tuned Magma checkpoints ship
      episodes/<episode_id>.parquet   # STEPS_DIR: one row per control step
      traces/<episode_id>.parquet     # TRACES_DIR: Trace-of-Mark labels (label-traces)

Everything here is ROS-free and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1
DATASET_FILE = "dataset.json"
STATISTICS_FILE = "dataset_statistics.json"
STEPS_DIR = "episodes"
TRACES_DIR = "traces"


class DatasetError(RuntimeError):
    """A dataset cannot be built, written or read; the message names the file and the reason."""


@dataclass(frozen=True, eq=False)
class StepRecord:
    """One control step of one episode.

    ``image``: (H, W, 3) uint8 RGB, decoded on read. ``action``: (7,) float64, dx dy dz
    (metres, base frame), droll dpitch dyaw (radians, relative rotation as roll/pitch/yaw about
    the base axes, the convention the Servo bridge executes), gripper (0 closed .. 1 open, the
    command, never normalized). ``state``: (7,) float64 EE pose at this step (x y z roll pitch
    yaw in the base frame) and gripper opening.
    """

    episode_id: str
    step: int
    stamp_ns: int
    image: np.ndarray
    action: np.ndarray
    state: np.ndarray
    instruction: str


@dataclass(frozen=True, eq=False)
class TraceSample:
    """One Trace-of-Mark training example (from ``label-traces``).

    ``image``: the window's first frame with the Set-of-Mark marks drawn, (H, W, 3) uint8 RGB.
    ``question``: the ToM user turn without the image token; ``answer``: the ToM answer text in
    Magma's exact format (magma-reference.md). ``traces``: {mark id: (n, 2) grid coordinates}.
    """

    episode_id: str
    step: int
    image: np.ndarray
    question: str
    answer: str
    traces: dict[int, np.ndarray]
