"""bag_player: publish a rosbag2 recording into the live graph, with /clock.

Each recorded (topic, type) stream gets a publisher of the real message type. The
recorded CDR bytes are published as they are (``Publisher.publish(bytes)``, raw
publishing, in rclpy since Galactic): the bag holds exactly the wire format, so
decoding to a Python message and encoding it again only costs time (measured for a
640x480 rgb8 image: 0.13 ms raw vs 0.34 ms decode + publish). The first message of
each stream is decoded once with the installed type, so a stream whose recorded
definition no longer matches this install is skipped with a warning instead of
feeding garbage to subscribers. Streams of types not importable here are skipped,
listed in one warning.

Timing: one playback thread publishes message k at ``wall_start + (t_k - t_start) /
rate`` on the monotonic clock (an absolute schedule: late messages go out at once,
errors never accumulate); ``rate`` 0 publishes as fast as possible. /clock carries
the recorded time: before any message more than one clock period ahead of the last
/clock, and at ``clock_hz`` while waiting between messages, so nodes with
``use_sim_time`` follow the bag at any rate (100 Hz by default, so that sim-time
timers up to 50 Hz, such as the servo bridge's command stream, still fire on time).
With ``loop`` the clock jumps back to the bag start on each pass, as ``ros2 bag play
--loop`` does. A recorded /clock is not replayed while the player publishes its own.
Progress (percentage of bag time, messages/s) is reported every
``progress_period_s``, then a summary line.

Completeness: playback starts at the first stored message (metadata.yaml's
``starting_time`` can be later) and the reader accounts for every message the bag
announces (:meth:`magma_ros.bags.BagReader.result`). Damage is played around: when a
pass could not read everything, playback ends with a one-line
:class:`~magma_ros.bags.IncompleteBagError` (how many, why) after every readable message
was published. Topics requested by name that cannot be played are refused up front.

QoS: a topic named in the contract gets the contract's profile (the stack subscribes
with it); other topics get what the recorded publishers offered, else reliable
(keep-last 10). As with a live publisher, a subscriber slower than the stream loses
messages once that history overflows; at ``rate`` 0 that is the subscriber's limit.

``restamp`` rewrites ``header.stamp`` (messages whose first field is a Header) to the
wall clock at publish time by patching the 8 stamp bytes in a copy of the CDR. Use it for nodes
that check observation age against wall time without ``use_sim_time``; the cost is
that stamps no longer match the recording: /tf (not restamped) cannot be looked up
at the new stamps, stamp-based synchronisation between sensors breaks, and outputs
cannot be traced back to recorded frames. Prefer /clock with ``use_sim_time``.
"""

from __future__ import annotations

import math
import struct
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import rclpy
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message

from magma_ros import contract
from magma_ros.bags import BagConnection, BagError, BagReader
from magma_ros.ros.runtime import message_type, qos

NODE_NAME = "bag_player"
SETTLE_S = 0.3  # after --wait-for-subscribers sees every subscriber: time for them to see us
_CONTRACT_TOPICS = {t.name: t for t in contract.TOPICS.values()}


class ReplayError(ValueError):
    """Replay options that cannot work with this bag (bad rate, no topic left to play...)."""


@dataclass
class ReplayOptions:
    """How to play a bag; every field is one ``magma-ros replay`` option."""

    rate: float = 1.0                                  # 1 = recorded speed, 2 = twice as fast, 0 = flat out
    topics: tuple[str, ...] = ()                       # recorded topic names to play; () = all
    remap: dict[str, str] = field(default_factory=dict)  # recorded name -> published name
    loop: bool = False                                 # start again at the end until stopped
    start_offset_s: float = 0.0                        # skip this much of the bag's beginning
    clock: bool = True                                 # publish /clock with the recorded time
    clock_hz: float = 100.0                            # /clock rate while waiting between messages
    restamp: bool = False                              # header.stamp := wall clock at publish time
    delay_s: float = 0.0                               # wait before the first message
    wait_for_subscribers_s: float = 0.0                # wait up to this long for every topic to be subscribed
    progress_period_s: float = 1.0                     # progress line period; 0 = only the summary

    def __post_init__(self) -> None:
        self.topics = tuple(_absolute(t) for t in self.topics)
        self.remap = {_absolute(k): _absolute(v) for k, v in self.remap.items()}
        checks = {"rate": self.rate >= 0, "start_offset_s": self.start_offset_s >= 0,
                  "clock_hz": self.clock_hz > 0, "delay_s": self.delay_s >= 0,
                  "wait_for_subscribers_s": self.wait_for_subscribers_s >= 0,
                  "progress_period_s": self.progress_period_s >= 0}
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or not math.isfinite(value):
                raise ReplayError(f"{name} must be {'> 0' if name == 'clock_hz' else '>= 0'} and finite, "
                                  f"got {value}")


@dataclass
class ReplayStats:
    published: int = 0
    per_topic: Counter[str] = field(default_factory=Counter)
    passes: int = 0
    wall_s: float = 0.0


@dataclass
class _Route:
    topic: str            # published name (after remapping)
    msg_cls: type
    publisher: Any
    header_first: bool
    verified: bool = False


def _absolute(name: str) -> str:
    if not name or name == "/":
        raise ReplayError(f"invalid topic name {name!r}")
    return name if name.startswith("/") else "/" + name


def _publisher_qos(conn: BagConnection, topic: str) -> QoSProfile:
    known = _CONTRACT_TOPICS.get(topic)
    if known is not None and known.type == conn.msgtype:
        return qos(known)
    if conn.reliable is None:
        return qos("reliable")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.RELIABLE if conn.reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if conn.transient_local
                      else DurabilityPolicy.VOLATILE)


def restamp_cdr(data: bytes, stamp_ns: int) -> bytes:
    """CDR bytes of a Header-first message with ``header.stamp`` set to ``stamp_ns`` (one copy)."""
    if len(data) < 12 or data[0] != 0 or data[1] not in (0, 1):  # plain CDR, big or little endian
        return data
    stamp = struct.pack("<iI" if data[1] == 1 else ">iI", stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)
    return b"".join((data[:4], stamp, memoryview(data)[12:]))


class BagPlayer(Node):
    """Publishes an open bag's messages on a playback thread; see the module docstring."""

    def __init__(self, bag: BagReader, options: ReplayOptions,
                 report: Callable[[str], None] | None = None, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.bag = bag
        self.options = options
        self.report = report or _print
        self.stats = ReplayStats()
        self.failure: BagError | None = None
        self.finished = threading.Event()
        self.skipped: dict[str, str] = {}     # recorded topic -> why it is not played
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._routes: dict[tuple[str, str], _Route] = {}
        self._last_clock_ns = -1
        self._clock_pub = (self.create_publisher(message_type(contract.CLOCK), contract.CLOCK.name,
                                                 qos(contract.CLOCK)) if options.clock else None)
        self._selected = self._make_routes()

    # -- set-up ------------------------------------------------------------------------
    def _make_routes(self) -> list[BagConnection]:
        o = self.options
        wanted = set(o.topics) or {c.topic for c in self.bag.connections}
        unplayable = {u.topic: u.reason for u in self.bag.skipped if u.topic in o.topics}
        unplayable.update({t: "not in the bag" for t in sorted(set(o.topics) - {c.topic for c in self.bag.connections})
                           if t not in unplayable})
        selected = []
        for conn in self.bag.connections:
            if conn.topic not in wanted:
                continue
            if o.clock and conn.topic == contract.CLOCK.name:
                self.skipped[conn.topic] = "recorded /clock replaced by the player's own"
                continue
            try:
                msg_cls = message_type(conn.msgtype)
            except (ImportError, AttributeError, ValueError):
                self.skipped[conn.topic] = f"type {conn.msgtype} not importable here"
                continue
            topic = o.remap.get(conn.topic, conn.topic)
            publisher = self.create_publisher(msg_cls, topic, _publisher_qos(conn, topic))
            header_first = o.restamp and self.bag.starts_with_header(conn.msgtype)
            self._routes[(conn.topic, conn.msgtype)] = _Route(topic, msg_cls, publisher, header_first)
            selected.append(conn)
        unplayable.update({t: why for t, why in self.skipped.items() if t in o.topics})
        if self.skipped:
            self.get_logger().warning("skipping: " + "; ".join(f"{t} ({why})" for t, why in self.skipped.items()))
        if not selected and self.bag.message_count:
            raise ReplayError(f"nothing to play: no playable topic among {', '.join(sorted(wanted))}")
        if unplayable:  # the user asked for these by name: refuse rather than play less than asked
            raise ReplayError("cannot play requested topic(s): " + "; ".join(
                f"{t} ({why})" for t, why in sorted(unplayable.items())))
        if self.bag.message_count and o.start_offset_s * 1e9 > self.bag.duration_ns:
            raise ReplayError(f"start offset {o.start_offset_s} s is past the end of the bag "
                              f"({self.bag.duration_ns / 1e9:.2f} s)")
        return selected

    # -- control -----------------------------------------------------------------------
    def start(self) -> None:
        """Start playback on its own thread; ``finished`` is set when it ends."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bag_player", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    close = stop

    def _stopped(self) -> bool:
        return self._halt.is_set() or not self.context.ok()

    # -- playback ----------------------------------------------------------------------
    def _run(self) -> None:
        started = time.monotonic()
        try:
            self._wait_for_subscribers()
            started = time.monotonic()  # statistics cover playback, not the waits
            if self._sleep(self.options.delay_s):
                while self._play_pass() and self.options.loop:
                    pass
        except BagError as err:
            self.failure = err
        except Exception as err:  # publishing after shutdown (Ctrl-C) raises rclpy errors
            if not self._stopped():
                self.get_logger().error(f"playback thread failed:\n{traceback.format_exc()}")
                self.failure = BagError(f"replay failed: {type(err).__name__}: {err}")
        finally:
            self.stats.wall_s = time.monotonic() - started
            self._flush()
            s = self.stats
            rate = s.published / s.wall_s if s.wall_s > 0 else 0.0
            outcome = "failed" if self.failure else "stopped" if self._halt.is_set() else "done"
            self.report(f"replay: {outcome} | {s.published} msgs in {s.wall_s:.2f} s ({rate:.1f} msg/s) | "
                        f"{s.passes} pass(es)")
            self.finished.set()

    def _play_pass(self) -> bool:
        """Play the bag once; False when stopped (or the bag is empty)."""
        o = self.options
        start_ns = self.bag.start_ns + int(o.start_offset_s * 1e9)
        span_ns = max(1, self.bag.end_ns - start_ns)
        wall0 = time.monotonic()
        clock_period_ns = int(1e9 / o.clock_hz)
        self._last_clock_ns = -1
        self._publish_clock(start_ns)
        progress = _Progress(self.report, o.progress_period_s, wall0)
        played = 0
        # From the first stored message (not metadata.yaml's starting_time), unless an offset is asked
        # for: a time window would also keep the read from accounting for every message.
        window_start = start_ns if o.start_offset_s > 0 else None
        for msg in self.bag.messages(self._selected, start_ns=window_start):
            if o.rate > 0 and not self._wait_until(wall0 + (msg.timestamp - start_ns) / 1e9 / o.rate,
                                                   wall0, start_ns, progress, span_ns):
                return False
            if self._stopped():
                return False
            if msg.timestamp - self._last_clock_ns >= clock_period_ns:
                self._publish_clock(msg.timestamp)
            self._publish(msg.topic, msg.msgtype, msg.data)
            played += 1
            progress.tick(msg.timestamp - start_ns, span_ns, self.stats.published)
        self.stats.passes += 1
        return played > 0 and not self._stopped()

    def _publish(self, topic: str, msgtype: str, data: bytes) -> None:
        route = self._routes.get((topic, msgtype))
        if route is None:
            return
        if not route.verified:
            try:
                deserialize_message(data, route.msg_cls)
            except Exception as err:  # the installed definition does not decode the recorded bytes
                del self._routes[(topic, msgtype)]
                self.skipped[topic] = f"{msgtype} does not decode with the installed definition ({err})"
                self.get_logger().warning(f"skipping {topic}: {self.skipped[topic]}")
                return
            route.verified = True
        if route.header_first:
            data = restamp_cdr(data, time.time_ns())
        route.publisher.publish(data)
        self.stats.published += 1
        self.stats.per_topic[route.topic] += 1

    def _publish_clock(self, stamp_ns: int) -> None:
        if self._clock_pub is None or stamp_ns <= self._last_clock_ns:
            return
        msg = self._clock_pub.msg_type()
        msg.clock.sec, msg.clock.nanosec = divmod(stamp_ns, 1_000_000_000)
        self._clock_pub.publish(msg)
        self._last_clock_ns = stamp_ns

    def _wait_until(self, due: float, wall0: float, start_ns: int, progress: _Progress, span_ns: int) -> bool:
        """Sleep until ``due`` (monotonic), ticking /clock meanwhile; False when stopped."""
        tick = 1.0 / self.options.clock_hz
        while True:
            now = time.monotonic()
            if now >= due:
                return True
            if self._stopped():
                return False
            bag_ns = start_ns + int((now - wall0) * self.options.rate * 1e9)
            self._publish_clock(bag_ns)
            progress.tick(bag_ns - start_ns, span_ns, self.stats.published)
            time.sleep(min(due - now, tick if self._clock_pub is not None else 0.1))

    def _sleep(self, seconds: float) -> bool:
        return not self._halt.wait(seconds) if seconds > 0 else not self._stopped()

    def _wait_for_subscribers(self) -> None:
        """Wait until every played topic has a subscriber, then SETTLE_S more.

        A publisher sees a subscriber before that subscriber has matched the publisher
        in return; messages sent in between are lost (volatile QoS), hence the settle.
        """
        if self.options.wait_for_subscribers_s <= 0:
            return
        deadline = time.monotonic() + self.options.wait_for_subscribers_s
        publishers = [r.publisher for r in self._routes.values()]  # not /clock: it ticks on regardless
        while time.monotonic() < deadline and not self._stopped():
            if all(p.get_subscription_count() > 0 for p in publishers):
                self._sleep(SETTLE_S)
                return
            time.sleep(0.02)

    def _flush(self, timeout_s: float = 2.0) -> None:
        """Give reliable subscribers time to receive the last messages before the process exits."""
        deadline = time.monotonic() + timeout_s
        publishers = [r.publisher for r in self._routes.values()]
        if self._clock_pub is not None:   # the final /clock too: nodes on sim time wait for it
            publishers.append(self._clock_pub)
        for publisher in publishers:
            left = deadline - time.monotonic()
            if left <= 0 or not self.context.ok():
                return
            try:
                publisher.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9)))
            except Exception:  # best-effort publishers / shutdown: nothing to wait for
                continue


class _Progress:
    """One progress line every ``period`` seconds: percentage of bag time, message rate."""

    def __init__(self, report: Callable[[str], None], period: float, wall0: float) -> None:
        self.report, self.period = report, period
        self.next = wall0 + period
        self.last_wall, self.last_count = wall0, 0

    def tick(self, bag_offset_ns: int, span_ns: int, count: int) -> None:
        now = time.monotonic()
        if self.period <= 0 or now < self.next:
            return
        rate = (count - self.last_count) / max(now - self.last_wall, 1e-9)
        self.report(f"replay: {100.0 * min(1.0, bag_offset_ns / span_ns):5.1f}% | bag t={bag_offset_ns / 1e9:.2f}/"
                    f"{span_ns / 1e9:.2f} s | {count} msgs | {rate:.1f} msg/s")
        self.next, self.last_wall, self.last_count = now + self.period, now, count


def _print(line: str) -> None:
    print(line, flush=True)


def play(bag: BagReader, options: ReplayOptions, args: list[str] | None = None,
         report: Callable[[str], None] | None = None) -> ReplayStats:
    """Init rclpy, play an open bag to the end (or Ctrl-C), shut down; returns the statistics.

    Raises ReplayError for options that cannot work and BagError when the bag turns
    out to be corrupt part-way (everything before the damage has been published).
    """
    rclpy.init(args=args if args is not None else [sys.argv[0]])
    player: BagPlayer | None = None
    try:
        player = BagPlayer(bag, options, report)
        executor = SingleThreadedExecutor()
        executor.add_node(player)
        player.start()
        while rclpy.ok() and not player.finished.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if player is not None:
            player.stop()
            player.destroy_node()
        rclpy.try_shutdown()
    if player is None:
        return ReplayStats()
    if player.failure is not None:
        raise player.failure
    return player.stats
