"""What the exporter remembers about a task between its events, in bounded memory.

task-succeeded and task-failed carry no task name or queue, only the id; task-sent (or
task-received) told us those earlier. :class:`TaskTracker` keeps them by id in
insertion order and evicts the oldest past ``max_tasks``, so a flood of tasks whose
terminal event never arrives (lost worker, exporter started mid-stream) cannot grow
memory. At its terminal event a task moves to a small map of recently finished tasks:
events of one task from different processes arrive out of order (a retried task's
task-retried often lands after its second run succeeded), and they still need its name.

We keep this instead of :class:`celery.events.state.State`'s task map: State stores
every field of every event per task (args, kwargs, result) and costs several times more
per event, which is the difference between keeping up with a busy broker or not.
"""

from __future__ import annotations

from collections import OrderedDict


class TaskInfo:
    __slots__ = (
        "eta", "executing", "hostname", "name", "queue", "received", "sent", "started",
        "wait_start",
    )

    def __init__(self, name: str, queue: str | None) -> None:
        self.name = name
        self.queue = queue
        #: Timestamps (seconds since the epoch, as the sending host's clock has them),
        #: checked (otel_celery_metrics.core.values); None when absent or refused.
        self.sent: float | None = None
        self.received: float | None = None
        self.started: float | None = None
        #: Between task-started and the task's end (counted in celery_tasks_executing).
        self.executing = False
        self.eta: float | None = None
        self.hostname: str | None = None
        #: The task-started time of a queue wait that waits for a late task-sent.
        self.wait_start: float | None = None


class TaskTracker:
    def __init__(self, max_tasks: int, max_recent: int = 10_000) -> None:
        self._max = max_tasks
        self._max_recent = max_recent
        self._tasks: OrderedDict[str, TaskInfo] = OrderedDict()
        self._recent: OrderedDict[str, TaskInfo] = OrderedDict()
        #: Tasks evicted before their terminal event (memory bound reached).
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, task_id: str) -> TaskInfo | None:
        info = self._tasks.get(task_id)
        if info is None:
            info = self._recent.get(task_id)
        return info

    def remember(self, task_id: str, info: TaskInfo) -> TaskInfo:
        tasks = self._tasks
        tasks[task_id] = info
        if len(tasks) > self._max:
            tasks.popitem(last=False)
            self.evicted += 1
        return info

    def forget(self, task_id: str) -> TaskInfo | None:
        info = self._tasks.pop(task_id, None)
        if info is not None:
            recent = self._recent
            recent[task_id] = info
            if len(recent) > self._max_recent:
                recent.popitem(last=False)
        return info
