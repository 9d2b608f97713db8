"""One lifecycle base for magma_ros nodes: transitions, owned resources, errors, parameters, autostart.

A node subclasses :class:`ManagedNode`, names its contract parameter class in ``PARAMETERS``
and writes only what is its own:

* ``initialize()``: what lives in every lifecycle state (e.g. the bridge's e-stop), once.
* ``setup()``: on configure, create resources through the ``own_*`` helpers (publishers,
  subscriptions, timers, services, clients, anything with a release function via
  :meth:`ManagedNode.own`). Raise to fail: everything created so far is released (newest
  first), the error is logged (one line for :class:`SetupError` / ContractError, with the
  traceback for anything unexpected), and the node stays unconfigured.
* ``teardown()``: node state that is not a registered resource (optional).
* ``activate()``: prepare to become active (publishers already enabled; the node is active
  right after it returns). ``deactivate()``: after the safety action. Both optional.
* ``safety_action()``: what makes the node's outputs safe (the bridge: zero twists). It runs
  first on deactivate (publishers still enabled), on error and on shutdown/close while active.
* ``apply_parameters(new, changed)``: take run-time changes of the contract's live
  parameters; raise ContractError to refuse. Read-only ones are refused before this.

The base owns the rest: rclpy swallows transition exceptions, so every hook runs inside a
guard that logs the traceback; ``on_error`` runs the safety action and releases everything
(back to unconfigured); ``autostart`` configures and activates at construction; ``close()``
(called by :func:`magma_ros.ros.runtime.spin_nodes` at exit) makes the outputs safe and stops
threads, leaving the rclpy entities to ``destroy_node()``.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from magma_ros.contract import ContractError, NodeParameters
from magma_ros.ros.runtime import declare_parameters

P = TypeVar("P", bound=NodeParameters)


class SetupError(RuntimeError):
    """An expected reason a transition cannot complete (a model that does not load, a missing package)."""


class ResourceRegistry:
    """Things created on configure, each with its release function; released newest first.

    ``entity``: an rclpy entity of the node (publisher, subscription, ...), which
    ``destroy_node()`` also releases.
    """

    def __init__(self) -> None:
        self._items: list[tuple[str, Callable[[], Any], bool]] = []
        self._lock = threading.Lock()

    def add(self, name: str, release: Callable[[], Any], entity: bool = False) -> None:
        with self._lock:
            self._items.append((name, release, entity))

    def names(self) -> list[str]:
        with self._lock:
            return [name for name, _, _ in self._items]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def release_all(self, entities: bool = True) -> list[str]:
        """Release everything (newest first; with ``entities`` false, all but the rclpy entities, which are
        forgotten: destroy_node() releases them); returns 'name: error' for each release that failed."""
        with self._lock:
            items, self._items = self._items, []
        failures = []
        for name, release, entity in reversed(items):
            if entity and not entities:
                continue
            try:
                release()
            except Exception as err:  # a half-created or already-destroyed handle: keep releasing the rest
                failures.append(f"{name}: {err!r}")
        return failures


class ThrottledLog:
    """Warnings rate-limited per reason (rclpy throttles per call site, so one reason would hide another).

    The first warning of a reason is logged at once, then at most one per ``period_s``, saying
    how many were held back since.
    """

    def __init__(self, logger: Any, period_s: float) -> None:
        self._logger = logger
        self._period_s = period_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, reason: str, text: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self._period_s:
                self._held[reason] = self._held.get(reason, 0) + 1
                return
            held = self._held.pop(reason, 0)
            self._last[reason] = now
        self._logger.warning(text + (f" (and {held} more like it in the last {now - last:.1f} s)"
                                     if held and last is not None else ""))


class ManagedNode(LifecycleNode, Generic[P]):
    """Base of our lifecycle nodes; see the module docstring."""

    PARAMETERS: ClassVar[type[NodeParameters]]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(self.PARAMETERS.NODE_NAME, **kwargs)
        self.params: P = declare_parameters(self, self.PARAMETERS, self._take_parameters)  # type: ignore[assignment]
        self.resources = ResourceRegistry()
        self._active = False
        self._configured = False
        self._closed = False
        self.initialize()
        if getattr(self.params, "autostart", False):
            self.trigger_configure()
            if self._configured:
                self.trigger_activate()

    # -- hooks for subclasses ------------------------------------------------------------
    def initialize(self) -> None:
        """Always-on parts, created once at construction (not released on cleanup)."""

    def setup(self) -> None:
        """Configure: create resources with the own_* helpers; raise to fail."""

    def teardown(self) -> None:
        """Cleanup of state that is not a registered resource."""

    def activate(self) -> None:
        """Prepare to be active: the publishers are enabled, ``active`` turns true right after this returns."""

    def deactivate(self) -> None:
        """After the safety action (``active`` is already false), before the publishers are disabled."""

    def safety_action(self) -> None:
        """Make the outputs safe (runs on deactivate, error, shutdown and close while active)."""

    def apply_parameters(self, new: P, changed: set[str]) -> None:
        """Take validated run-time changes of live parameters; raise ContractError to refuse."""

    # -- resources -------------------------------------------------------------------
    def own(self, name: str, release: Callable[[], Any], entity: bool = False) -> None:
        """Register something to release on cleanup, error or shutdown (``entity``: an rclpy entity of this node)."""
        self.resources.add(name, release, entity)

    def own_publisher(self, msg_type: Any, topic: str, qos: Any, lifecycle: bool = True, **kwargs: Any) -> Any:
        """A publisher released on cleanup; ``lifecycle``: it publishes only while active."""
        if lifecycle:
            pub = self.create_lifecycle_publisher(msg_type, topic, qos, **kwargs)
            self.own(f"publisher {topic}", lambda: self.destroy_lifecycle_publisher(pub), entity=True)
        else:
            pub = self.create_publisher(msg_type, topic, qos, **kwargs)
            self.own(f"publisher {topic}", lambda: self.destroy_publisher(pub), entity=True)
        return pub

    def own_subscription(self, msg_type: Any, topic: str, callback: Callable[..., Any], qos: Any,
                         **kwargs: Any) -> Any:
        sub = self.create_subscription(msg_type, topic, callback, qos, **kwargs)
        self.own(f"subscription {topic}", lambda: self.destroy_subscription(sub), entity=True)
        return sub

    def own_timer(self, period_s: float, callback: Callable[[], Any], **kwargs: Any) -> Any:
        timer = self.create_timer(period_s, callback, **kwargs)
        self.own(f"timer {period_s} s", lambda: self.destroy_timer(timer), entity=True)
        return timer

    def own_service(self, srv_type: Any, name: str, callback: Callable[..., Any], **kwargs: Any) -> Any:
        srv = self.create_service(srv_type, name, callback, **kwargs)
        self.own(f"service {name}", lambda: self.destroy_service(srv), entity=True)
        return srv

    def own_client(self, srv_type: Any, name: str, **kwargs: Any) -> Any:
        client = self.create_client(srv_type, name, **kwargs)
        self.own(f"client {name}", lambda: self.destroy_client(client), entity=True)
        return client

    def own_thread(self, name: str, target: Callable[[threading.Event], None], join_timeout_s: float = 10.0) -> Any:
        """A daemon thread running ``target(stop_event)``; on release the event is set and the thread joined."""
        stop = threading.Event()
        thread = threading.Thread(target=target, args=(stop,), name=name, daemon=True)
        thread.start()

        def release() -> None:
            stop.set()
            thread.join(timeout=join_timeout_s)

        self.own(f"thread {name}", release)
        return thread

    @property
    def active(self) -> bool:
        return self._active

    # -- transitions -----------------------------------------------------------------
    def _guarded(self, what: str, hook: Callable[[], None]) -> bool:
        """Run a hook; on an exception log it with its traceback (rclpy would swallow it) and return False."""
        try:
            hook()
        except (SetupError, ContractError) as err:
            self.get_logger().error(f"{what} failed: {err}")
            return False
        except Exception as err:
            self.get_logger().error(f"{what} failed: {err!r}\n{traceback.format_exc().rstrip()}")
            return False
        return True

    def _release(self, entities: bool = True) -> None:
        self._active = False
        self._guarded("teardown", self.teardown)
        for failure in self.resources.release_all(entities):
            self.get_logger().warning(f"could not release {failure}")
        self._configured = False

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._guarded("configure", self.setup):
            self._configured = True
            return TransitionCallbackReturn.SUCCESS
        self._release()  # nothing a failed configure created stays behind
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # lifecycle publishers on
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        if not self._guarded("activate", self.activate):
            self._guarded("safety action", self.safety_action)
            super().on_deactivate(state)
            return TransitionCallbackReturn.FAILURE
        self._active = True
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        safe = self._guarded("safety action", self.safety_action)  # publishers still enabled
        self._guarded("deactivate", self.deactivate)
        result = super().on_deactivate(state)
        return result if safe else TransitionCallbackReturn.ERROR

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._active = False
            self._guarded("safety action", self.safety_action)
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error while in {state.label!r}: outputs made safe, resources released, "
                                "back to unconfigured")
        if self._active:
            self._active = False
            self._guarded("safety action", self.safety_action)
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Make the outputs safe (if active), stop threads and release what is not an rclpy entity; the
        entities go with ``destroy_node()`` (destroying them here could race an executor still spinning).
        Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._active:
            self._active = False
            self._guarded("safety action", self.safety_action)
        self._release(entities=False)

    # -- parameters ------------------------------------------------------------------
    def _take_parameters(self, new: P, changed: set[str]) -> None:
        try:
            self.apply_parameters(new, changed)
        except ContractError:
            raise
        except Exception as err:  # refuse anything the node could not apply, with the reason
            raise ContractError(f"{', '.join(sorted(changed))}: {err}") from err
        self.params = new
