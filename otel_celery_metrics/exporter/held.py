"""Worker task events held back, briefly, until their task's task-sent event names the queue.

Worker events (task-received, task-started, ...) carry no queue; task-sent does. A worker
that consumes one queue took the message from it, but for a worker consuming several the
queue comes only from task-sent, which often arrives *after* the worker's events: the
producer publishes it on its own connection after the task message. Counting those
events at once would put them under the default queue. :class:`HeldEvents` keeps them
for up to a grace period per task; the handlers replay them right after the task-sent
arrives, or with what is known once the grace has run out (producers that send no
task-sent events). Memory is bounded: past ``limit`` tasks, the oldest are released.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

Event = Mapping[str, Any]


class HeldEvents:
    def __init__(self, grace: float, limit: int, clock: Callable[[], float]) -> None:
        self._grace = grace
        self._limit = limit
        self._clock = clock
        self._by_task: dict[str, list[Event]] = {}
        #: (release time, task id), oldest first; ids released early are skipped later.
        self._deadlines: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._by_task)

    def holding(self, task_id: str) -> bool:
        return task_id in self._by_task

    def hold(self, task_id: str, event: Event) -> Iterator[list[Event]]:
        """Hold ``event``; yields the events of tasks released to stay within the limit."""
        held = self._by_task.get(task_id)
        if held is not None:
            held.append(event)  # behind its task's earlier events: order is kept
            return
        self._by_task[task_id] = [event]
        self._deadlines.append((self._clock() + self._grace, task_id))
        while len(self._by_task) > self._limit and self._deadlines:
            oldest = self._by_task.pop(self._deadlines.popleft()[1], None)
            if oldest is not None:
                yield oldest

    def release(self, task_id: str) -> list[Event]:
        """The task's held events, in arrival order (its task-sent came)."""
        return self._by_task.pop(task_id, [])

    def due(self, now: float) -> bool:
        return bool(self._deadlines) and self._deadlines[0][0] <= now

    def overdue(self, now: float) -> Iterator[list[Event]]:
        """Events of tasks whose grace ran out, task by task, oldest first."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            held = self._by_task.pop(deadlines.popleft()[1], None)
            if held is not None:
                yield held
