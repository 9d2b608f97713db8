"""DAgger for the default model: the model drives, the scripted expert labels the states it reaches.

    .venv/bin/python training/recipes/dagger.py DRIVER --data DATASET --task pick --seed 2600 --episodes 200 \
        [--beta 0.5] [--driver-inset | --no-driver-inset] [--gripper-hold N]
    .venv/bin/python training/recipes/dagger.py --merge PART1 PART2 --data DATASET   # runs side by side
    .venv/bin/python training/recipes/dagger.py --merge BUILT --only reach --id-prefix reach_ --data DATASET

Behaviour cloning trains on the expert's own states; a policy's small errors take it to states no
recording holds, where it has never seen the right answer (Ross et al. 2011, "A reduction of
imitation learning ... to no-regret online learning"). Here, ROS-free (sim + model called directly,
as ``closed_loop_trace.py``), every control step executes the model's action (or, with probability
``--beta``, the expert's), and records the frame the policy sees with the expert's answer from
that state as the label. The episodes are appended to DATASET (a ``magma-ros dataset build``
output, spec sim_panda; created empty if missing) with ids ``dagger-<task>-<seed>``, and its
statistics are recomputed. Runs side by side each write their own dataset; ``--merge`` then
copies them into one.

Labels: the expert's command over one step period (``action[:3]`` = linear twist x period in the
base frame, ``action[3:6]`` = angular twist x period, the rotation vector the Servo bridge
executes; ``action[6]`` = 1 open / 0 closed), where a recording's label is the motion the hand
made (within a few per cent of the command: attempt 13's centring slope is 3.75 mm per cm against
the expert's gain of 4). The frame is the one the recordings store (the wrist inset in the corner,
resized to the spec's 256 x 256); ``--no-driver-inset`` lets a model trained without the inset
drive on the plain frame while the inset frame is recorded.

The expert keeps its phase machine, watching the states the model reaches, with one change
(:class:`FunnelExpert`): where the hand already hangs over the cube (below the hover height,
within 2 cm across, the fingers within 0.3 rad of square) it descends from there rather than
going back up to the hover point first, so a model that came down off-centre is shown how to
centre on the way down; after a failed grasp, or where the model opened the fingers while the
expert lifts, it retries from where the hand is instead of flying back up to the hover point.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

FUNNEL_ACROSS_M = 0.02
FUNNEL_YAW_RAD = 0.3


class FunnelExpert:
    """A ScriptedExpert (pick) that starts its descent wherever the hand already hangs over the cube,
    and never flies back up from there.

    The scripted expert goes back to its hover point 10 cm up whenever a grasp fails (closed on
    nothing, slipped) and, in this recipe, when the model opened the fingers while it lifted. Above
    the cube with the fingers open, that "up fast" label sits on frames that look exactly like the
    moment before a grasp, and a model trained on it learns to jump up where it should close
    (attempt 14: act_dagger2 came down centred and square to 1 cm above the cube's centre, then rose
    2.5 cm, over and over). Here, wherever the hand is over the cube (within 2 cm across, below the
    hover height, within 0.3 rad of square), the label is the descent from there: centre, open the
    fingers if they are shut on nothing, come down, close.
    """

    def __init__(self, expert) -> None:  # type: ignore[no-untyped-def]
        self.expert = expert

    @property
    def phase(self):  # type: ignore[no-untyped-def]
        return self.expert.phase

    def _over_cube(self, observation) -> bool:  # type: ignore[no-untyped-def]
        from magma_ros.sim.expert import grasp_yaw
        from magma_ros.sim.tasks import TaskFamily
        from magma_ros.sim.transforms import yaw_of

        cube = observation.cube_poses.get(self.expert.task.color)
        if self.expert.task.family is not TaskFamily.PICK or cube is None:
            return False
        ee = observation.ee_pose.position
        across = float(np.linalg.norm((ee - cube.position)[:2]))
        height = float(ee[2] - cube.position[2])
        heading = yaw_of(observation.ee_pose.orientation)
        off = abs(math.remainder(heading - grasp_yaw(yaw_of(cube.orientation), heading), 2 * math.pi))
        return across < FUNNEL_ACROSS_M and height < self.expert.config.hover_height and off < FUNNEL_YAW_RAD

    def __call__(self, observation):  # type: ignore[no-untyped-def]
        from magma_ros.sim.episode import Action
        from magma_ros.sim.expert import Phase

        expert = self.expert
        if expert.phase is Phase.LIFT and observation.gripper_width > expert.config.cube_size + 0.01:
            expert._enter(Phase.APPROACH)   # the model let go: nothing is held, start over
        if expert.phase is Phase.APPROACH and self._over_cube(observation):
            expert._enter(Phase.DESCEND)   # the recipe steers the expert's phase machine
        action = expert(observation)
        if expert.phase is Phase.APPROACH and self._over_cube(observation):   # a failed grasp: retry from here
            expert._enter(Phase.DESCEND)
            if observation.gripper_width < 0.5 * expert.config.cube_size:   # shut on nothing: open first
                return Action.create(np.zeros(3), np.zeros(3), expert.config.open_width)
            action = expert(observation)
        return action


def label_of(action, step_period: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The expert's Action as a 7-DoF step label (metres and radians per step, gripper 1 open / 0 closed)."""
    from magma_ros.conventions import gripper_command
    from magma_ros.sim.expert import ExpertConfig

    twist = action.as_vector()[:6]
    return np.concatenate([twist * step_period, [gripper_command(action.gripper_width / ExpertConfig().open_width)]])


def run_episode(backend, cell, session, family: str, seed: int, beta: float, rng, step_period: float,  # type: ignore[no-untyped-def]
                driver_inset: bool, frame_size: int, gripper_hold: int = 0, max_steps: int = 0) -> dict:
    """One episode with the model (and, with probability ``beta`` per step, the expert) driving; the
    frames it saw (resized to ``frame_size``), the expert's labels, the states, and who drove."""
    from magma_ros.codecs import GripperHysteresis
    from magma_ros.contract import PolicyNodeParameters
    from magma_ros.conventions import quat_to_rpy
    from magma_ros.image_codec import resize_frame
    from magma_ros.sim.episode import apply_policy_delta, observe
    from magma_ros.sim.expert import ScriptedExpert
    from magma_ros.sim.session import choose_task

    task = choose_task(family, seed, "", max_steps)
    status = session.reset(task, seed)
    expert = FunnelExpert(ScriptedExpert(task))
    ticks = round(step_period / cell.timestep)
    policy = PolicyNodeParameters()
    hysteresis = GripperHysteresis(policy.gripper_open_threshold, policy.gripper_close_threshold,
                                   min_hold_steps=gripper_hold)
    camera, inset = cell.camera_names[0], cell.inset_camera
    gripper_open = True
    frames, labels, states, stamps, who = [], [], [], [], []
    for step in range(task.max_steps):
        observation = observe(cell, step, task.instruction)
        recorded = cell.render_view(camera, inset).rgb
        label = label_of(expert(observation), step_period)
        if rng.random() < beta:
            command, by = label.copy(), "expert"
            hysteresis.update(command[6])   # keep the dwell's state with what was executed
        else:
            seen = recorded if driver_inset else cell.render_view(camera, None).rgb
            output = backend.act(seen, task.instruction)
            action = np.asarray(output.action, dtype=np.float64)
            if not (output.valid and np.all(np.isfinite(action))):
                command, by = np.concatenate([np.zeros(6), [1.0 if gripper_open else 0.0]]), "none"
            else:
                command, by = action.copy(), "model"
                command[6] = hysteresis.update(action[6])
        ee = observation.ee_pose
        frames.append(resize_frame(np.ascontiguousarray(recorded), frame_size))
        labels.append(label)
        states.append(np.concatenate([ee.position, quat_to_rpy(np.asarray(ee.orientation)),
                                      [1.0 if gripper_open else 0.0]]))
        stamps.append(round(observation.sim_time * 1e9))
        who.append(by)
        gripper_open = apply_policy_delta(cell, command, step_period, gripper_open)
        cell.step_ticks(ticks)
        status = session.control_step_done()
        if status.success or session.done:
            break
    return {"task": task, "frames": frames, "labels": np.array(labels), "states": np.array(states),
            "stamps": stamps, "success": bool(status.success), "model_steps": who.count("model"),
            "expert_steps": who.count("expert")}


def merge(destination: Path, sources: list[Path], task: str | None = None, id_prefix: str = "") -> int:
    """Copy every episode of the ``sources`` datasets (only those of ``task`` when given) into
    ``destination`` (same name and image format), their ids and files prefixed with ``id_prefix``,
    and recompute its statistics; returns how many were copied."""
    import dataclasses
    import shutil

    from magma_ros.training.dataset import DatasetWriter, EpisodeEntry
    from magma_ros.training.records import DATASET_FILE, DatasetError

    index = json.loads((destination / DATASET_FILE).read_text())
    writer = DatasetWriter(destination, index["name"], image_format=index.get("image_format", "png"))
    count = 0
    for source in sources:
        theirs = json.loads((source / DATASET_FILE).read_text())
        if (theirs["name"], theirs.get("image_format")) != (index["name"], index.get("image_format")):
            raise DatasetError(f"{source}: dataset {theirs['name']!r} ({theirs.get('image_format')}) cannot join "
                               f"{index['name']!r} ({index.get('image_format')})")
        for data in theirs["episodes"]:
            entry = EpisodeEntry.from_dict(data, str(source / DATASET_FILE))
            if task is not None and entry.metadata.get("task") != task:
                continue
            theirs_file = entry.file
            if id_prefix:
                entry = dataclasses.replace(entry, episode_id=id_prefix + entry.episode_id,
                                            file=str(Path(theirs_file).with_name(id_prefix + Path(theirs_file).name)))
            if writer.has_episode(entry.episode_id):
                raise DatasetError(f"{destination} already holds episode {entry.episode_id} ({source}); "
                                   "--id-prefix gives the copies ids of their own")
            (destination / entry.file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / theirs_file, destination / entry.file)
            writer.add_entry(entry)
            count += 1
    writer.write_statistics()
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("driver", nargs="?", help="the checkpoint that drives")
    parser.add_argument("--data", type=Path, required=True,
                        help="dataset to append the episodes to (created, empty, if missing)")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="SRC",
                        help="instead of driving: copy the episodes of these datasets (dagger.py runs side by side, "
                             "each into its own) into --data and recompute its statistics")
    parser.add_argument("--only", choices=("reach", "pick"), help="--merge: copy only this task's episodes")
    parser.add_argument("--id-prefix", default="", help="--merge: prefix the copied episodes' ids (and files) with "
                                                         "this, where the sources' ids clash with the dataset's")
    parser.add_argument("--task", choices=("reach", "pick"), default="pick")
    parser.add_argument("--seed", type=int, help="the first episode's seed (required when driving)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--beta", type=float, default=0.5, help="probability per step that the expert's action runs")
    parser.add_argument("--driver-inset", action=argparse.BooleanOptionalAction, default=True,
                        help="the driver sees the frame with the wrist inset (default) or the plain frame")
    parser.add_argument("--gripper-hold", type=int, default=0)
    parser.add_argument("--statistics", default="sim_panda")
    parser.add_argument("--max-steps", type=int, default=0, help="step budget (0 = the task's)")
    args = parser.parse_args(argv)
    if args.merge:
        count = merge(args.data, args.merge, args.only, args.id_prefix)
        print(f"dagger: {count} episodes merged into {args.data}; statistics recomputed")
        return 0
    if not args.driver:
        parser.error("a driver checkpoint is needed (or --merge)")
    if args.seed is None:
        parser.error("--seed is needed when driving")
    if not 0.0 <= args.beta <= 1.0:
        parser.error("--beta must be in [0, 1]")
    if args.seed + args.episodes > 5000:
        parser.error("seeds from 5000 up are held out for evaluation")

    from magma_ros.backends import BackendError, create_backend
    from magma_ros.contract import SimArmParameters
    from magma_ros.model.policy import DEFAULT_ACTION_FRAME_SIZE
    from magma_ros.sim import THIRD_PERSON_CAMERA, Workcell, WorkcellConfig, policy_cameras
    from magma_ros.sim.render_detail import arm_urdf_for
    from magma_ros.sim.session import EpisodeSession
    from magma_ros.training.dataset import DatasetWriter
    from magma_ros.training.records import DATASET_FILE

    if not (args.data / DATASET_FILE).exists():
        DatasetWriter(args.data, args.statistics, spec={"image": {"size": DEFAULT_ACTION_FRAME_SIZE}})
    index = json.loads((args.data / DATASET_FILE).read_text())
    writer = DatasetWriter(args.data, index["name"], image_format=index.get("image_format", "png"))
    frame_size = int((index.get("spec") or {}).get("image", {}).get("size", DEFAULT_ACTION_FRAME_SIZE))
    try:
        backend = create_backend("torch", checkpoint=args.driver, statistics=args.statistics)
    except BackendError as err:
        print(f"dagger: {err}", file=sys.stderr)
        return 2
    sim = SimArmParameters()
    camera = dataclasses.replace(THIRD_PERSON_CAMERA, width=sim.image_width, height=sim.image_height)
    rng = np.random.default_rng(args.seed)
    wins = 0
    started = time.monotonic()
    with Workcell(WorkcellConfig(seed=args.seed, cameras=policy_cameras(camera, True),
                                 arm_urdf=arm_urdf_for(sim.render_detail))) as cell:
        session = EpisodeSession(cell, sim.control_period_s)
        for k, seed in enumerate(range(args.seed, args.seed + args.episodes)):
            episode_id = f"dagger-{args.task}-{seed}"
            if writer.has_episode(episode_id):
                continue
            result = run_episode(backend, cell, session, args.task, seed, args.beta, rng, sim.control_period_s,
                                 args.driver_inset, frame_size, args.gripper_hold, args.max_steps)
            wins += result["success"]
            writer.write_episode(episode_id, stamps_ns=result["stamps"], images=result["frames"],
                                 actions=result["labels"], states=result["states"],
                                 instructions=result["task"].instruction, source=f"dagger:{args.driver}",
                                 metadata={"seed": seed, "task": args.task, "instruction": result["task"].instruction,
                                           "dagger": {"driver": str(args.driver), "beta": args.beta,
                                                      "success": result["success"],
                                                      "model_steps": result["model_steps"],
                                                      "expert_steps": result["expert_steps"]}})
            print(f"[{k + 1}/{args.episodes}] seed {seed}: {'success' if result['success'] else 'failure'}, "
                  f"{len(result['stamps'])} steps ({result['model_steps']} by the model), "
                  f"{time.monotonic() - started:.0f} s", flush=True)
    backend.close()
    writer.write_statistics()
    print(f"dagger: {args.episodes} episodes appended to {args.data}, {wins} succeeded; statistics recomputed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
