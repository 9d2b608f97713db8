"""Dataset build throughput: frames/s from mcap bags into a dataset (`magma-ros dataset build`), no ToM labels.

Bags like `magma-ros record-demos` writes (320x240 rgb8 camera at 10 Hz, EE pose at 60 Hz, joint
states, gripper commands, Servo twists, episode.json), generated here so the bench needs no ROS
graph; or your own recordings with ``--bags DIR --spec SPEC``. The build runs with the sim spec
(resize to 256 x 256, PNG and JPEG) in 2 worker processes, the target being 2 cores.
Floor: >= 500 frames/s (frames written into the dataset per second of wall time).

    .venv/bin/python bench/dataset_bench.py [--episodes 8] [--frames 150] [--workers 2] [--bags DIR --spec SPEC]
        [--check]   # exit 1 below the floor
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FLOOR_FRAMES_PER_S = 500.0


def _scene(i: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A camera-like frame: a shaded table, three cubes, an arm-coloured bar that moves with i."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([90 + y // 4, 80 + y // 5, 60 + x // 8], axis=-1).astype(np.uint8)
    for k, colour in enumerate(((200, 40, 40), (40, 180, 60), (50, 60, 200))):
        cx, cy = 60 + 90 * k, 150 + 10 * k
        frame[cy:cy + 24, cx:cx + 24] = colour
    bx = 40 + (i * 3) % (width - 80)
    frame[40:130, bx:bx + 18] = (220, 220, 225)
    return frame


def write_bags(root: Path, episodes: int, frames: int) -> list[Path]:
    from magma_ros import contract
    from magma_ros.bags import typestore_for, write_bag
    from magma_ros.conventions import EpisodeMetadata, quat_from_rpy

    t = typestore_for("kilted").types
    t0 = 1_700_000_000 * 10**9

    def header(stamp: int, frame: str) -> object:
        return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=stamp // 10**9,
                                                                                nanosec=stamp % 10**9), frame_id=frame)

    scenes = [_scene(i).reshape(-1) for i in range(frames)]
    zero = t["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
    twist = t["geometry_msgs/msg/Twist"](linear=zero, angular=zero)
    bags = []
    for e in range(episodes):
        records = []
        for i in range(frames):
            stamp = t0 + i * 100_000_000
            records.append((contract.CAMERA_IMAGE.name, contract.CAMERA_IMAGE.type, stamp, t["sensor_msgs/msg/Image"](
                header=header(stamp, "camera"), height=240, width=320, encoding="rgb8", is_bigendian=0, step=960,
                data=scenes[(i + e) % frames])))
            records.append((contract.SERVO_TWIST.name, contract.SERVO_TWIST.type, stamp,
                            t["geometry_msgs/msg/TwistStamped"](header=header(stamp, "panda_link0"), twist=twist)))
        for k in range(frames * 6):
            stamp = t0 + round(k * 1e9 / 60)
            q = quat_from_rpy(np.array([np.pi, 0.0, 0.01 * k]))
            records.append((contract.EE_POSE.name, contract.EE_POSE.type, stamp, t["geometry_msgs/msg/PoseStamped"](
                header=header(stamp, "panda_link0"), pose=t["geometry_msgs/msg/Pose"](
                    position=t["geometry_msgs/msg/Point"](x=0.4 + 0.001 * k, y=0.0, z=0.3),
                    orientation=t["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))))
            joints = t["sensor_msgs/msg/JointState"](
                header=header(stamp, ""), name=[f"panda_joint{j}" for j in range(1, 8)] +
                ["panda_finger_joint1", "panda_finger_joint2"], position=np.zeros(9), velocity=np.zeros(9),
                effort=np.zeros(9))
            records.append((contract.JOINT_STATES.name, contract.JOINT_STATES.type, stamp, joints))
        for stamp, position in ((t0, 0.04), (t0 + frames * 50_000_000, 0.0)):
            point = t["trajectory_msgs/msg/JointTrajectoryPoint"](
                positions=np.array([position, position]), velocities=np.zeros(0), accelerations=np.zeros(0),
                effort=np.zeros(0), time_from_start=t["builtin_interfaces/msg/Duration"](sec=0, nanosec=500_000_000))
            records.append((contract.GRIPPER_TRAJECTORY.name, contract.GRIPPER_TRAJECTORY.type, stamp,
                            t["trajectory_msgs/msg/JointTrajectory"](
                                header=header(stamp, "panda_link0"),
                                joint_names=["panda_finger_joint1", "panda_finger_joint2"], points=[point])))
        bag = write_bag(root / f"episode_{e:04d}", sorted(records, key=lambda r: r[2]))
        EpisodeMetadata(instruction="pick up the red cube", success=True, seed=e, control_rate_hz=10.0).write(bag)
        bags.append(bag)
    return bags


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--frames", type=int, default=150, help="camera frames per episode")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bags", help="build from these recordings instead of generated ones")
    parser.add_argument("--spec", default=str(REPO / "config" / "datasets" / "sim_panda.yaml"))
    parser.add_argument("--check", action="store_true", help="exit 1 when the floor is not met")
    args = parser.parse_args(argv if argv is not None else [])

    from magma_ros.training.builder import build_dataset
    from magma_ros.training.spec import load_spec

    spec = load_spec(args.spec)
    work = Path(tempfile.mkdtemp(prefix="magma_dataset_bench_"))
    try:
        if args.bags:
            inputs = [Path(args.bags)]
            print(f"recordings: {args.bags}")
        else:
            started = time.perf_counter()
            write_bags(work / "bags", args.episodes, args.frames)
            inputs = [work / "bags"]
            size = sum(p.stat().st_size for p in (work / "bags").rglob("*.mcap")) / 1e6
            print(f"{args.episodes} generated mcap bags x {args.frames} frames (320x240 rgb8 at 10 Hz, EE pose and "
                  f"joint states at 60 Hz), {size:.0f} MB, written in {time.perf_counter() - started:.1f} s")
        best = 0.0
        for image_format in ("png", "jpeg"):
            chosen = dataclasses.replace(spec, image=dataclasses.replace(spec.image, format=image_format))
            cpu_before = _cpu_seconds()
            summary = build_dataset(inputs, chosen, work / f"out_{image_format}", workers=args.workers,
                                    progress=False, report=print)
            cpu = _cpu_seconds() - cpu_before
            rate = summary.frames_per_second
            best = max(best, rate)
            print(f"  {image_format:4s} {summary.steps} frames in {summary.seconds:.2f} s with {args.workers} "
                  f"worker(s): {rate:.0f} frames/s (skipped {len(summary.skipped)}); CPU {cpu:.2f} s = "
                  f"{1e3 * cpu / max(summary.steps, 1):.2f} ms/frame, i.e. {summary.steps / cpu * args.workers:.0f} "
                  f"frames/s on {args.workers} otherwise idle cores")
        verdict = "meets" if best >= FLOOR_FRAMES_PER_S else "BELOW"
        print(f"dataset build: best {best:.0f} frames/s, {verdict} the {FLOOR_FRAMES_PER_S:.0f} frames/s floor "
              "(a shared or loaded machine reads low)")
        return 1 if args.check and best < FLOOR_FRAMES_PER_S else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
