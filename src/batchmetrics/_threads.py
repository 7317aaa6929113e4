"""The inbox through which worker threads record without touching the event loop.

Threads check their arguments, build the event and append it to a deque
(thread-safe); a semaphore of ``capacity`` slots blocks a thread, never the
loop, when the loop has not caught up (backpressure). A pump task on the loop
takes the events out in chunks and hands them to the collector's stream,
releasing the slots once the stream has accepted them.
"""

from __future__ import annotations

import threading
from collections import deque

from ._events import Event


class InboxClosed(Exception):
    """The batch no longer takes events from threads."""


class ThreadInbox:
    """A bounded, thread-safe hand-off of events from threads to the loop."""

    def __init__(self, capacity: int) -> None:
        self._events: deque[Event] = deque()
        self._slots = threading.Semaphore(capacity)
        self._lock = threading.Lock()
        self._closed = False
        #: Set by the first put, so the loop side starts pumping only when threads record.
        self.used = False

    def put(self, event: Event, *, poll: float = 0.1) -> None:
        """Add one event; blocks while the inbox is full. Raises ``InboxClosed``."""
        while not self._slots.acquire(timeout=poll):
            if self._closed:
                raise InboxClosed
        with self._lock:
            if self._closed:
                self._slots.release()
                raise InboxClosed
            self._events.append(event)
            self.used = True

    def take(self, limit: int) -> list[Event]:
        """Up to ``limit`` events, oldest first (loop side; slots are released by ``done``)."""
        events = self._events
        out: list[Event] = []
        popleft = events.popleft
        try:
            for _ in range(limit):
                out.append(popleft())
        except IndexError:
            pass
        return out

    def put_back(self, events: list[Event]) -> None:
        """Return events taken but not handed on, to the front, in their order."""
        self._events.extendleft(reversed(events))

    def done(self, count: int) -> None:
        """Give back ``count`` slots once their events are on the stream."""
        for _ in range(count):
            self._slots.release()

    def __len__(self) -> int:
        return len(self._events)

    def close(self) -> None:
        """Refuse further puts; events already in stay to be taken."""
        with self._lock:
            self._closed = True
