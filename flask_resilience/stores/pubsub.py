"""A Redis pub/sub listener thread that survives forks and Redis restarts."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from ..lifecycle import ProcessLocalWorker

logger = logging.getLogger("flask_resilience.stores")

Handler = Callable[[bytes], None]


class Subscriber(ProcessLocalWorker):
    """Delivers messages on subscribed channels to their handlers.

    The thread starts on the first :meth:`subscribe` in each process, so an
    app created before gunicorn forks still listens in every worker. When the
    connection drops, the ``on_disconnect`` callbacks run (a cache empties its
    in-process layer, since it may miss invalidations), and the thread
    reconnects with backoff and subscribes again.
    """

    def __init__(
        self,
        pubsub_factory: Callable[[], Any],
        *,
        poll_interval: float = 0.2,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        self._pubsub_factory = pubsub_factory
        self._poll_interval = poll_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._handlers: dict[str, list[Handler]] = {}
        self._gap_callbacks: list[Callable[[], None]] = []
        super().__init__("flask-resilience-pubsub")
        self.reset_process()

    def reset_process(self) -> None:
        self._lock = threading.Lock()
        self._confirmed: set[str] = set()
        self._confirmed_changed = threading.Condition(self._lock)
        self._listening_since: float | None = None
        self.connects = 0
        self.disconnects = 0

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call ``handler(message)`` for every message on ``channel``.

        Does not start the thread: ``ensure_running()`` does, from the first
        request of each process. A thread started in a pre-fork master (gunicorn
        ``--preload``) could hold the import lock at fork time and deadlock the
        workers' first import.
        """
        with self._lock:
            if channel not in self._handlers:
                self._listening_since = None  # not listening on this one yet
            self._handlers.setdefault(channel, []).append(handler)

    def wants_thread(self) -> bool:
        return bool(self._handlers)

    def on_gap(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` when messages may have been missed.

        That is when a live connection is lost, and again when the listener is
        back after a loss (messages published meanwhile never reached it).
        """
        self._gap_callbacks.append(callback)

    def listening_since(self) -> float | None:
        """``time.monotonic()`` when every subscribed channel was last confirmed,
        or None while any is not (not started yet, or reconnecting).

        Anything a process cached before this time may have missed an
        invalidation, and so must not be trusted.
        """
        return self._listening_since

    def wait_until_listening(self, timeout: float = 5.0) -> bool:
        """Start the thread if needed and block until Redis confirmed every
        subscribed channel (True) or ``timeout`` seconds passed."""
        self.ensure_running()
        with self._confirmed_changed:
            return self._confirmed_changed.wait_for(
                lambda: self._confirmed >= set(self._handlers), timeout=timeout
            )

    def run(self) -> None:
        backoff = self._backoff_initial
        while not self.stopping:
            pubsub = None
            try:
                pubsub = self._pubsub_factory()
                self._listen(pubsub)
            except (redis.RedisError, OSError) as exc:
                self._lost(exc)
                if self.wait(backoff):
                    break
                backoff = min(backoff * 2, self._backoff_max)
                continue
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        pubsub.close()
            backoff = self._backoff_initial

    def _listen(self, pubsub: Any) -> None:
        subscribed: set[str] = set()
        while not self.stopping:
            with self._lock:
                wanted = set(self._handlers) - subscribed
            if wanted:
                pubsub.subscribe(*sorted(wanted))
                subscribed |= wanted
            message = pubsub.get_message(timeout=self._poll_interval)
            if message is None:
                continue
            channel = _text(message.get("channel"))
            if message.get("type") == "subscribe":
                with self._confirmed_changed:
                    # redis-py re-subscribes by itself after a dropped connection;
                    # a second confirmation of a channel is how that shows.
                    if channel in self._confirmed:
                        self._confirmed.clear()
                        self.disconnects += 1
                    reconnected = not self._confirmed and self.disconnects > 0
                    if not self._confirmed:
                        self.connects += 1
                    self._confirmed.add(channel)
                    if self._confirmed >= set(self._handlers):
                        self._listening_since = time.monotonic()
                    else:
                        self._listening_since = None
                    self._confirmed_changed.notify_all()
                if reconnected:
                    logger.info("Redis pub/sub listener reconnected")
                    self._report_gap()
            elif message.get("type") == "message":
                self._dispatch(channel, message.get("data"))

    def _dispatch(self, channel: str, data: object) -> None:
        payload = data if isinstance(data, bytes) else str(data).encode()
        with self._lock:
            handlers = list(self._handlers.get(channel, ()))
        for handler in handlers:
            try:
                handler(payload)
            except Exception:
                logger.exception("pub/sub handler for %s failed", channel)

    def _lost(self, exc: BaseException) -> None:
        with self._confirmed_changed:
            had_connection = bool(self._confirmed)
            self._confirmed.clear()
            self._listening_since = None
        if had_connection:
            self.disconnects += 1
            logger.warning("lost the Redis pub/sub connection (%s); reconnecting", exc)
            self._report_gap()

    def _report_gap(self) -> None:
        for callback in self._gap_callbacks:
            try:
                callback()
            except Exception:
                logger.exception("pub/sub disconnect callback failed")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
