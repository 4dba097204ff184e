"""Extra cost per task of Celery task instrumentation, side by side, through real dispatch.

Each (round, mode) runs in a fresh interpreter that plays both processes of a prefork
worker, with Celery's own code:

- the pool child (a forked process, as Celery's pool forks): it sends
  ``worker_process_init``, then for each task pushes a realistic protocol-2 request onto a
  real Task and sends task_prerun / task_success / task_postrun (and task_failure every
  ``--failure-every`` tasks) with Celery's own ``Signal.send``: what a task pays;
- the worker's main process (the parent, after the child exits): for each task, what
  it does around an execution with Celery's real request class, built by Celery's
  ``strategy.create_request_cls`` from a kombu message: ``task_received`` is sent, then
  the pool's callbacks ``on_accepted`` and ``on_success`` (with the result tuple a pool
  hands back, or a raised exception every ``--failure-every`` tasks).

Figures, CPU time (user+sys) per task: ``child`` and ``main``; extra = mode - bare in the
same round, for each and for their sum (the total a task costs the worker).

Modes:
- bare: Celery alone;
- noop_receivers: a do-nothing receiver on task_prerun and task_postrun (the floor any
  design that records in task signals pays for Celery's dispatch);
- recipe: prometheus_client in signals (``_recipe.py``), all in the child;
- otel_port: the recipe ported to an SDK MeterProvider + Prometheus reader, recorded in
  the child's receivers;
- ours: our instrumentor as ``opentelemetry-instrument`` sets it up (SDK MeterProvider
  and Prometheus reader in the main process, instrumented before the fork). The child
  runs nothing of ours per task (exemplars are off: no tracing instrumentation here);
  the main process records from the request callbacks and counts task_received.

Rounds alternate the order of modes; medians over rounds are printed with ratios of our
extra cost to the recipe's. Every run checks that the counted tasks equal N + warm-up.

    /work/venv/bin/python bench/inprocess_overhead.py [--tasks 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("bare", "noop_receivers", "recipe", "otel_port", "ours")
HERE = Path(__file__).resolve().parent
TASK_NAME = "bench.noop"
QUEUE = "celery"


# -- one run (inside a fresh interpreter) ---------------------------------------------------


def _make_task() -> Any:
    from celery import Celery

    app = Celery("bench", broker="memory://", set_as_current=False)
    app.conf.task_ignore_result = True

    @app.task(name=TASK_NAME)
    def noop() -> None:
        return None

    app.finalize()
    return app.tasks[TASK_NAME]


def _base_request() -> dict[str, Any]:
    """The fields of a protocol-2 request as a pool child's task.request sees them."""
    delivery_info = {"exchange": "", "routing_key": QUEUE, "priority": 0, "redelivered": False}
    return {
        "lang": "py", "task": TASK_NAME, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
        "parent_id": None, "argsrepr": "()", "kwargsrepr": "{}",
        "origin": "gen4242@producer", "ignore_result": True, "replaced_task_nesting": 0,
        "stamped_headers": None, "stamps": {},
        "properties": {
            "correlation_id": None, "reply_to": "c0ffee00-reply", "delivery_mode": 2,
            "delivery_info": delivery_info, "priority": 0, "body_encoding": "base64",
            "delivery_tag": "d3adb33f",
        },
        "reply_to": "c0ffee00-reply", "hostname": "celery@bench",
        "delivery_info": delivery_info, "args": [], "kwargs": {}, "is_eager": False,
        "callbacks": None, "errbacks": None, "chain": None, "chord": None,
        # Stamped by ours in the main process when the request is built; the request
        # carries it into the child (present for every mode; only ours reads it).
        "otel_celery_received_at": time.time(),
    }


def _run_tasks(task: Any, count: int, failure_every: int, work_us: float = 0.0) -> None:
    """``count`` executions' worth of what Celery's tracer does around a task.

    ``work_us``: CPU the task body burns (a busy loop).
    """
    from celery import signals
    from celery.app.task import Context

    send_prerun = signals.task_prerun.send
    send_postrun = signals.task_postrun.send
    send_success = signals.task_success.send
    send_failure = signals.task_failure.send
    push, pop = task.request_stack.push, task.request_stack.pop
    base = _base_request()
    ids = [f"{i:08x}-5eed-4b1d-9c0d-{i:012x}" for i in range(4096)]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    error = ValueError("boom")
    for i in range(count):
        task_id = ids[i & 4095]
        request = dict(base)
        request["id"] = request["root_id"] = request["correlation_id"] = task_id
        push(Context(request))
        send_prerun(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
        retval = task.run()
        if work_us:
            until = time.perf_counter() + work_us / 1e6
            while time.perf_counter() < until:
                pass
        if failure_every and i % failure_every == 0:
            state = "FAILURE"
            send_failure(
                sender=task, task_id=task_id, exception=error, args=args, kwargs=kwargs,
                traceback=None, einfo=None,
            )
        else:
            state = "SUCCESS"
            send_success(sender=task, result=retval, runtime=0.0)
        send_postrun(
            sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs,
            retval=retval, state=state,
        )
        pop()


def _sdk_provider() -> tuple[Any, Any]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry, scope_info_enabled=False)
    return MeterProvider(metric_readers=[reader]), registry


def _instrument_ours(provider: Any) -> None:
    from otel_celery_metrics.instrumentor import CeleryMetricsInstrumentor
    from otel_celery_metrics.recording.settings import Settings

    CeleryMetricsInstrumentor().instrument(meter_provider=provider, settings=Settings())


def _sample_sum(registry: Any, name: str) -> float:
    return sum(
        s.value for m in registry.collect() for s in m.samples if s.name == name
    )


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _child(mode: str, task: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The pool child's part: set up the mode's receivers, run, time, count."""
    from celery import signals

    # What Celery's pool does in every new child (ours switches to forwarding here).
    signals.worker_process_init.send(sender=None)
    counted: Any = None
    if mode == "noop_receivers":

        def nothing(**_: Any) -> None:
            return None

        signals.task_prerun.connect(nothing, weak=False)
        signals.task_postrun.connect(nothing, weak=False)
    elif mode == "recipe":
        from _recipe import SignalRecipe

        recipe = SignalRecipe()
        recipe.connect()
        counted = recipe.count
    elif mode == "otel_port":
        from _recipe import OtelPort

        provider, registry = _sdk_provider()
        OtelPort(provider.get_meter("port")).connect()
        counted = lambda: _sample_sum(registry, "port_tasks_total")  # noqa: E731
    tasks = args.tasks
    _run_tasks(task, args.warmup, args.failure_every, args.task_work_us)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    _run_tasks(task, tasks, args.failure_every, args.task_work_us)
    wall1, cpu1 = time.perf_counter(), time.process_time()
    if mode == "ours":
        # What a pool child does on exit.
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    return {
        "child_wall_us": (wall1 - wall0) / tasks * 1e6,
        "child_cpu_us": (cpu1 - cpu0) / tasks * 1e6,
        "counted": counted() if counted else None,
    }


class _Pool:
    """What ``create_request_cls`` is given as the pool (its apply_async is not used)."""

    apply_async = None


def _messages(count: int = 1024) -> list[Any]:
    """Protocol-2 task messages as a worker's consumer receives them."""
    from kombu import Message

    base = _base_request()
    keys = ("lang", "task", "shadow", "eta", "expires", "group", "group_index", "retries",
            "timelimit", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
            "replaced_task_nesting", "stamped_headers", "stamps")
    messages = []
    for i in range(count):
        task_id = f"{i:08x}-5eed-4b1d-9c0d-{i:012x}"
        headers = {k: base[k] for k in keys} | {"id": task_id, "root_id": task_id}
        messages.append(Message(
            body=b'[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]',
            headers=headers, content_type="application/json", content_encoding="utf-8",
            # With our instrumentation, the queue's consumer callback names the queue
            # (otel_celery_metrics.core.routing; its own cost: bench/queue_stamp.py).
            delivery_info=dict(base["delivery_info"], otel_celery_queue=QUEUE),
        ))
    return messages


def _no_ack(*_args: Any) -> None:
    return None


def _main_side(task: Any, count: int, failure_every: int) -> None:
    """``count`` tasks' worth of what a worker's main process does around an execution:
    build the task's request from the message (Celery's per-task request class, as its
    strategy does), send task_received, then the pool's callbacks."""
    from billiard.einfo import ExceptionInfo
    from celery import signals
    from celery.worker import strategy
    from celery.worker.request import Request

    request_cls = strategy.create_request_cls(Request, task, _Pool(), "celery@bench", None,
                                              app=task.app)
    send_received = signals.task_received.send
    messages = _messages()
    monotonic = time.monotonic
    app = task.app
    try:
        raise ValueError("boom")
    except ValueError:
        failed = (1, ExceptionInfo(), None)
    for i in range(count):
        request = request_cls(messages[i & 1023], on_ack=_no_ack, app=app, task=task,
                              hostname="celery@bench", decoded=False)
        send_received(sender=None, request=request)
        request.on_accepted(4242, monotonic())
        if failure_every and i % failure_every == 0:
            request.on_success(failed)
        else:
            request.on_success((0, None, 0.0001))


def run_one(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fork a pool child that runs the tasks, then play the worker's main process."""
    task = _make_task()
    parent_registry = None
    if mode == "ours":
        provider, parent_registry = _sdk_provider()
        _instrument_ours(provider)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # --- the pool child
        os.close(read_fd)
        try:
            result: dict[str, Any] = _child(mode, task, args)
        except BaseException as exc:  # noqa: BLE001 - report, never hang the parent
            result = {"error": repr(exc)}
        os.write(write_fd, json.dumps(result).encode())
        os._exit(0)
    # --- the worker's main process
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks))
    if "error" in result:
        raise SystemExit(f"{mode}: child failed: {result['error']}")
    tasks, warmup = args.tasks, args.warmup
    _main_side(task, warmup, args.failure_every)
    wall0, cpu0 = time.perf_counter(), _cpu()
    _main_side(task, tasks, args.failure_every)
    wall1, cpu1 = time.perf_counter(), _cpu()
    result["main_cpu_us"] = (cpu1 - cpu0) / tasks * 1e6
    result["main_wall_us"] = (wall1 - wall0) / tasks * 1e6
    if parent_registry is not None:
        result["counted"] = _sample_sum(parent_registry, "celery_tasks_total")
    expected = tasks + warmup
    if mode in ("recipe", "otel_port") and args.failure_every:
        # The recipe counts a failed task twice (task_failure and task_postrun both
        # increment the counter); reproduced as is, since its cost is what is compared.
        every = args.failure_every
        expected += -(-tasks // every) + -(-warmup // every)
    if mode not in ("bare", "noop_receivers") and result["counted"] != expected:
        raise SystemExit(f"{mode}: counted {result['counted']} tasks, expected {expected}")
    return result


# -- the driver ------------------------------------------------------------------------------


def _spawn(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--one", mode,
        "--tasks", str(args.tasks), "--warmup", str(args.warmup),
        "--failure-every", str(args.failure_every), "--task-work-us", str(args.task_work_us),
    ]
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    # Keep opentelemetry-instrument style configuration out of the runs.
    for key in [k for k in env if k.startswith(("OTEL_", "CELERY_"))]:
        del env[key]
    out = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="measured tasks per run")
    parser.add_argument("--warmup", type=int, default=5_000, help="unmeasured tasks first")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--failure-every", type=int, default=0,
                        help="every Kth task fails (0: all succeed)")
    parser.add_argument("--task-work-us", type=float, default=0.0,
                        help="CPU each task body burns (0: a no-op task)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return 0
    modes = [m for m in args.modes.split(",") if m]
    if "bare" not in modes:
        modes.insert(0, "bare")
    runs: list[dict[str, dict[str, Any]]] = []
    print(f"N={args.tasks} warmup={args.warmup} rounds={args.rounds} "
          f"failure_every={args.failure_every} task_work_us={args.task_work_us} "
          f"cpus={os.cpu_count()}", flush=True)
    for r in range(args.rounds):
        order = modes[r % len(modes):] + modes[: r % len(modes)]
        if r % 2:
            order.reverse()
        this_round = {}
        for mode in order:
            this_round[mode] = _spawn(mode, args)
            f = this_round[mode]
            print(f"round {r + 1} {mode:14s} child cpu {f['child_cpu_us']:6.2f} "
                  f"wall {f['child_wall_us']:6.2f}  main cpu {f['main_cpu_us']:6.2f} us/task",
                  flush=True)
        runs.append(this_round)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "runs": runs}, indent=1))
    _report(modes, runs)
    return 0


def _report(modes: list[str], runs: list[dict[str, dict[str, Any]]]) -> None:
    def extra(mode: str, key: str) -> list[float]:
        return [r[mode][key] - r["bare"][key] for r in runs]

    print("\nmedians over rounds, us of CPU per task (extra = mode - bare in the same round)")
    print(f"{'mode':14s} {'child':>7s} {'main':>7s} | {'+child':>7s} {'+main':>7s} {'+total':>7s}")
    totals: dict[str, list[float]] = {}
    for mode in modes:
        child = [r[mode]["child_cpu_us"] for r in runs]
        main = [r[mode]["main_cpu_us"] for r in runs]
        e_child, e_main = extra(mode, "child_cpu_us"), extra(mode, "main_cpu_us")
        totals[mode] = [c + m for c, m in zip(e_child, e_main, strict=True)]
        print(f"{mode:14s} {_median(child):7.2f} {_median(main):7.2f} | {_median(e_child):+7.2f} "
              f"{_median(e_main):+7.2f} {_median(totals[mode]):+7.2f}")
    if "recipe" not in modes:
        return
    recipe = totals["recipe"]
    print("\nratios of extra cost (child + main) to the recipe's, median of per-round ratios"
          " (target <= 0.50)")
    for mode in modes:
        if mode in ("bare", "recipe"):
            continue
        ratio = _median([t / rt for t, rt in zip(totals[mode], recipe, strict=True)])
        verdict = "met" if ratio <= 0.5 else "MISSED"
        print(f"{mode:14s} {ratio:5.2f}  ({verdict})")


if __name__ == "__main__":
    sys.exit(main())
