"""expert_teleop: the scripted expert (magma_ros.sim.ScriptedExpert) as a ROS teleoperator.

It watches what an operator watching the cell would know, from ROS topics: the TCP pose
(/ee_pose), the finger joints (/joint_states, opening = sum of the two) and where the
cubes are (sim_arm_node's ground-truth markers). It learns the task from the episode
status. For each observation (one cube-marker message per control step, 10 Hz) it answers
exactly like a Servo teleop: a TwistStamped (speed units, base frame, stamped now) on
Servo's ``delta_twist_cmds``, preceded by a gripper JointTrajectory whenever the commanded
opening changes. It never touches the simulator directly. ``perturb_std`` > 0 shakes its hand
(:class:`~magma_ros.sim.expert.PerturbedExpert`, seeded by each episode's seed).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration as DurationMsg
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import JointState as JointStateMsg
from std_msgs.msg import Header, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import MarkerArray

from magma_ros import contract
from magma_ros.ros.runtime import declare_parameters, qos
from magma_ros.sim import ExpertConfig, Observation, Pose, ScriptedExpert, make_task
from magma_ros.sim.config import PANDA_FINGER_JOINTS
from magma_ros.sim.expert import MisjudgingExpert, PerturbedExpert
from magma_ros.sim.session import EpisodeStatus
from magma_ros.sim.workcell import JointState

NODE_NAME = contract.ExpertTeleopParameters.NODE_NAME
BASE_FRAME = "panda_link0"
GRIPPER_MOTION_S = 0.5


def _nanoseconds(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _pose(msg: Any) -> Pose:
    p, o = msg.position, msg.orientation
    return Pose((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))


class ExpertTeleopNode(Node):
    """Answers every observation of the simulated workcell with the scripted expert's command."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._lock = threading.Lock()
        self._pose: PoseStamped | None = None
        self._joints: JointStateMsg | None = None
        self._objects: MarkerArray | None = None
        self._status: EpisodeStatus | None = None
        self.params = declare_parameters(self, contract.ExpertTeleopParameters)
        self._expert: ScriptedExpert | MisjudgingExpert | PerturbedExpert | None = None
        self._episode = -1
        self._answered_ns = -1
        self._gripper_sent: float | None = None
        self.answers = 0
        self._twist_pub = self.create_publisher(TwistStamped, contract.SERVO_TWIST.name, qos(contract.SERVO_TWIST))
        self._gripper_pub = self.create_publisher(JointTrajectory, contract.GRIPPER_TRAJECTORY.name,
                                                  qos(contract.GRIPPER_TRAJECTORY))
        self._inputs = [
            self.create_subscription(PoseStamped, contract.EE_POSE.name, self._on_pose, qos(contract.EE_POSE)),
            self.create_subscription(JointStateMsg, contract.JOINT_STATES.name, self._on_joints,
                                     qos(contract.JOINT_STATES)),
            self.create_subscription(MarkerArray, contract.SIM_OBJECTS.name, self._on_objects,
                                     qos(contract.SIM_OBJECTS)),
            self.create_subscription(String, contract.SIM_EPISODE.name, self._on_status, qos(contract.SIM_EPISODE)),
        ]

    def _on_pose(self, msg: PoseStamped) -> None:
        with self._lock:
            self._pose = msg
            self._answer()

    def _on_joints(self, msg: JointStateMsg) -> None:
        with self._lock:
            self._joints = msg
            self._answer()

    def _on_objects(self, msg: MarkerArray) -> None:
        with self._lock:
            self._objects = msg
            self._answer()

    def _on_status(self, msg: String) -> None:
        with self._lock:
            self._status = EpisodeStatus.from_json(msg.data)
            if self._status.episode != self._episode:
                self._episode = self._status.episode
                expert = ScriptedExpert(make_task(self._status.task, self._status.color, self._status.max_steps),
                                        ExpertConfig(**self.params.expert_config_fields()))
                if self.params.aim_error > 0:
                    expert = MisjudgingExpert(expert, self.params.aim_error, self._status.seed)
                self._expert = (PerturbedExpert(expert, self.params.perturb_std, self._status.seed,
                                                self.params.perturb_quiet_height)
                                if self.params.perturb_std > 0 else expert)
                self._gripper_sent = None

    def _answer(self) -> None:
        """Act once per observation: when pose, joints and cube markers of the same instant are in."""
        status, expert, pose, joints, objects = self._status, self._expert, self._pose, self._joints, self._objects
        if status is None or expert is None or status.done or pose is None or joints is None or objects is None:
            return
        if not objects.markers:
            return
        stamp_ns = _nanoseconds(objects.markers[0].header.stamp)
        if stamp_ns <= self._answered_ns or stamp_ns < round(status.start_time * 1e9):
            return
        if _nanoseconds(pose.header.stamp) != stamp_ns or _nanoseconds(joints.header.stamp) != stamp_ns:
            return
        self._answered_ns = stamp_ns
        positions = dict(zip(joints.name, joints.position, strict=False))
        width = sum(positions.get(name, 0.0) for name in PANDA_FINGER_JOINTS)
        observation = Observation(
            step=status.step, sim_time=stamp_ns * 1e-9 - status.start_time, instruction=status.instruction,
            ee_pose=_pose(pose.pose), gripper_width=width,
            joint_state=JointState(tuple(joints.name), np.array(joints.position), np.array(joints.velocity),
                                   np.array(joints.effort)),
            cube_poses={m.ns: _pose(m.pose) for m in objects.markers})
        action = expert(observation)
        now_ns = max(self.get_clock().now().nanoseconds, stamp_ns)
        header = Header(stamp=Time(nanoseconds=now_ns).to_msg(), frame_id=BASE_FRAME)
        if self._gripper_sent is None or action.gripper_width != self._gripper_sent:
            self._gripper_sent = action.gripper_width
            point = JointTrajectoryPoint(positions=[action.gripper_width / 2.0] * 2,
                                         time_from_start=DurationMsg(sec=0, nanosec=int(GRIPPER_MOTION_S * 1e9)))
            self._gripper_pub.publish(JointTrajectory(header=header, joint_names=list(PANDA_FINGER_JOINTS),
                                                      points=[point]))
        twist = TwistStamped(header=header)
        twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z = (float(v) for v in action.linear)
        twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z = (float(v) for v in action.angular)
        self._twist_pub.publish(twist)
        self.answers += 1
