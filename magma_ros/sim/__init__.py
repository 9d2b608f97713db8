"""The simulated workcell (ROS-free): a pybullet Panda, cubes, cameras, tasks and an expert.

``sim_arm_node`` is a thin ROS shell over :class:`Workcell`; the demo recorder and the
evaluator drive episodes through :func:`run_episode`.
"""

from magma_ros.sim.camera import CameraFrame, CameraIntrinsics
from magma_ros.sim.config import (
    CUBE_COLORS,
    THIRD_PERSON_CAMERA,
    WRIST_CAMERA,
    CameraConfig,
    GripperConfig,
    PhysicsConfig,
    SceneConfig,
    ServoConfig,
    WorkcellConfig,
    policy_cameras,
    wrist_inset_camera,
)
from magma_ros.sim.description import WorkcellDescription
from magma_ros.sim.episode import Action, EpisodeConfig, EpisodeResult, Observation, Trajectory, observe, run_episode
from magma_ros.sim.errors import (
    CommandError,
    ConfigError,
    DescriptionError,
    FrameError,
    SceneError,
    SimError,
    TaskError,
)
from magma_ros.sim.expert import ExpertConfig, ScriptedExpert
from magma_ros.sim.servo import CommandOutcome, ServoStatus
from magma_ros.sim.tasks import SuccessCriteria, Task, TaskFamily, make_task, task_for_seed
from magma_ros.sim.transforms import Pose
from magma_ros.sim.workcell import JointState, Workcell

__all__ = [
    "CUBE_COLORS",
    "THIRD_PERSON_CAMERA",
    "WRIST_CAMERA",
    "Action",
    "CameraConfig",
    "CameraFrame",
    "CameraIntrinsics",
    "CommandError",
    "CommandOutcome",
    "ConfigError",
    "DescriptionError",
    "EpisodeConfig",
    "EpisodeResult",
    "ExpertConfig",
    "FrameError",
    "GripperConfig",
    "JointState",
    "Observation",
    "PhysicsConfig",
    "Pose",
    "SceneConfig",
    "SceneError",
    "ScriptedExpert",
    "ServoConfig",
    "ServoStatus",
    "SimError",
    "SuccessCriteria",
    "Task",
    "TaskError",
    "TaskFamily",
    "Trajectory",
    "Workcell",
    "WorkcellConfig",
    "WorkcellDescription",
    "make_task",
    "observe",
    "policy_cameras",
    "run_episode",
    "task_for_seed",
    "wrist_inset_camera",
]
