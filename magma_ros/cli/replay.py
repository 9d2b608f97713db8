"""`magma-ros replay BAG`: publish a rosbag2 recording into the graph, with /clock.

The bag is opened (and its errors reported) before rclpy is imported, so a wrong
path fails fast with one line. Exit codes: 0 every message of the played topics
was played (or Ctrl-C), 1 the bag is missing or unreadable, or messages could not be
read (everything readable is played first; one line says how many and why), 2 bad
options (including topics asked for by name that cannot be played). Streams that
cannot be decoded (e.g. service events whose stored definition is a .srv) are skipped
with one warning line giving their counts.
"""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay", help="publish a rosbag2 recording (mcap or sqlite3) into the ROS graph",
        description="Publish a rosbag2 recording into the live graph at recorded or scaled speed, with "
                    "/clock carrying the recorded time (run the stack with use_sim_time:=true), so the "
                    "nodes run on the recording exactly as on the robot.")
    parser.add_argument("bag", help="bag directory, or one .mcap / .db3 file")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="playback speed: 1 = recorded, 2 = twice as fast, 0 = as fast as possible")
    parser.add_argument("--topics", nargs="+", default=[], metavar="TOPIC",
                        help="play only these recorded topics (give BAG before this option)")
    parser.add_argument("--remap", action="append", default=[], metavar="OLD:=NEW",
                        help="publish recorded topic OLD as NEW (repeatable)")
    parser.add_argument("--loop", action="store_true", help="play again from the start until Ctrl-C")
    parser.add_argument("--start-offset", type=float, default=0.0, metavar="SECONDS",
                        help="skip this much of the bag's beginning")
    parser.add_argument("--restamp", action="store_true",
                        help="set header.stamp to the wall clock at publish time (for nodes without "
                             "use_sim_time; stamps then no longer match the recording or /tf)")
    parser.add_argument("--clock", action=argparse.BooleanOptionalAction, default=True,
                        help="publish /clock with the recorded time (default: on)")
    parser.add_argument("--clock-hz", type=float, default=100.0, help="/clock rate between messages")
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                        help="wait before the first message")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to this long until every played topic has a subscriber")
    parser.add_argument("--progress", type=float, default=1.0, metavar="SECONDS",
                        help="progress line period (0 = summary only)")
    parser.add_argument("--distro", default="kilted",
                        help="message definitions for bags that carry none (humble, jazzy, kilted, lyrical)")
    parser.set_defaults(func=run)


def _fail(message: str, code: int) -> int:
    print(f"magma-ros replay: {message}", file=sys.stderr, flush=True)
    return code


def run(args: argparse.Namespace) -> int:
    from magma_ros.bags import BagError, open_bag

    # bags.py logs what it had to work around (a truncated mcap, a missing metadata.yaml)
    logging.basicConfig(level=logging.WARNING, format="magma-ros replay: warning: %(message)s")

    remap: dict[str, str] = {}
    for item in args.remap:
        old, sep, new = item.partition(":=")
        if not sep or not old or not new:
            return _fail(f"--remap expects OLD:=NEW, got {item!r}", 2)
        remap[old] = new
    try:
        bag = open_bag(args.bag, args.distro)
    except BagError as err:
        return _fail(str(err), 1)
    with bag:
        announced = "" if bag.announced is None else f", metadata.yaml announces {bag.announced}"
        print(f"magma-ros replay: {bag.path} ({bag.storage}, {len(bag.files)} file(s), {bag.message_count} msgs"
              f"{announced}, {bag.duration_ns / 1e9:.2f} s, {len(bag.connections)} topics) at rate {args.rate}",
              flush=True)
        from magma_ros.ros.bag_player import ReplayError, ReplayOptions, play

        try:
            options = ReplayOptions(rate=args.rate, topics=tuple(args.topics), remap=remap, loop=args.loop,
                                    start_offset_s=args.start_offset, clock=args.clock, clock_hz=args.clock_hz,
                                    restamp=args.restamp, delay_s=args.delay,
                                    wait_for_subscribers_s=args.wait_for_subscribers,
                                    progress_period_s=args.progress)
            stats = play(bag, options)
        except ReplayError as err:
            return _fail(str(err), 2)
        except BagError as err:
            return _fail(str(err), 1)
        if stats.passes:
            print(f"magma-ros replay: {bag.result().line()}", flush=True)
    return 0
