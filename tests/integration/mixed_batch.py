"""A mixed batch of tasks with a known outcome per state, and the counts it must produce."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support import wait_for

EXPECTED_STATES = {
    ("tests.ok", "SUCCESS"): 6,
    ("tests.ok", "REVOKED"): 2,
    ("tests.fail", "FAILURE"): 3,
    ("tests.flaky", "RETRY"): 2,
    ("tests.flaky", "SUCCESS"): 2,
    ("tests.ignored", "IGNORED"): 1,
    ("tests.rejected", "REJECTED"): 2,
}
#: Executions that ran from task_prerun to task_postrun.
EXECUTED = 6 + 3 + 4 + 1 + 2
#: Messages the worker took from the broker: every execution and the two revoked ones it
#: discarded on arrival.
RECEIVED = EXECUTED + 2
TOTAL_TERMINAL = sum(EXPECTED_STATES.values())

#: The batch on a broker without broadcasts (SQS: no revoke can reach a worker), with
#: ``broadcasts=False``: the two revoked tasks are left out and three tasks with a 3 s
#: countdown are added, whose queue wait counts from their ETA.
COUNTDOWNS = 3
NO_BROADCAST_STATES = {
    **{key: n for key, n in EXPECTED_STATES.items() if key != ("tests.ok", "REVOKED")},
    ("tests.ok", "SUCCESS"): EXPECTED_STATES[("tests.ok", "SUCCESS")] + COUNTDOWNS,
}
NO_BROADCAST_EXECUTED = EXECUTED + COUNTDOWNS


def send_mixed_batch(
    app: Any, queue: str, destination: str | None = None, *, broadcasts: bool = True
) -> None:
    """``destination``: the worker's node name, so that only it confirms the revokes (any
    worker on the broker may answer a broadcast first, before ours has the revoke).
    ``broadcasts=False``: the batch of :data:`NO_BROADCAST_STATES`."""
    def send(name: str, *args: Any, **opts: Any) -> None:
        app.send_task(name, args=args, queue=queue, routing_key=queue, **opts)

    if not broadcasts:
        # First, so that the worker has them before their ETA (what makes it the reference).
        for i in range(COUNTDOWNS):
            send("tests.ok", 200 + i, countdown=3)
    for i in range(6):
        send("tests.ok", i)
    for _ in range(3):
        send("tests.fail")
    for _ in range(2):
        send("tests.flaky", 1)
    send("tests.ignored")
    for _ in range(2):
        send("tests.rejected")
    if not broadcasts:
        return
    # Revoke two ids first (and wait for the worker to confirm), then publish them: the
    # worker discards them on arrival with task_revoked, deterministically on any broker.
    # (Expired messages are not deterministic: RabbitMQ drops them itself.)
    # Over Redis a broadcast published before the worker's control consumer subscribed is
    # lost (pub/sub keeps nothing); seen right after "ready" with Celery 5.3.6/kombu 5.3.4.
    # A revoke is idempotent, so ask again until the worker confirms.
    revoked_ids = [str(uuid.uuid4()) for _ in range(2)]
    for task_id in revoked_ids:
        wait_for(
            lambda task_id=task_id: app.control.broadcast(
                "revoke", arguments={"task_id": task_id}, reply=True, timeout=2, limit=1,
                destination=[destination] if destination else None,
            ),
            timeout=20, what="the worker to confirm the revoke",
        )
    for i, task_id in enumerate(revoked_ids):
        send("tests.ok", 100 + i, task_id=task_id)
