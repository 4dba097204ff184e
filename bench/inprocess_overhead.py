"""Extra cost per task of task-signal instrumentation, side by side, through real dispatch.

Each (round, mode) runs in a fresh interpreter that forks one "pool child", as Celery's
prefork pool does. The child pushes a realistic request (protocol-2 fields, delivery_info,
the received-at stamp a worker's main process adds) onto a real Task and sends
task_prerun / task_success / task_postrun (and task_failure every ``--failure-every``
tasks) with Celery's own ``Signal.send``, N times. The parent meanwhile does what a
worker's main process does for that mode: nothing for most, and for ``ours_child`` it
runs our ForkBridge drain thread that decodes the child's datagrams into a real SDK
MeterProvider with a Prometheus reader. So for ``ours_child`` the figures include getting
the measurements out of the child:

- child cpu: CPU time (user+sys) of the child's loop per task: what a task pays;
- drain cpu: CPU time of the parent while the child ran, per task: what the worker's
  main process pays to record the child's measurements (0 for the other modes);
- extra = mode - bare in the same round, for child, drain and their sum.

Modes:
- bare: no receivers;
- noop_receivers: a do-nothing receiver on task_prerun and task_postrun (the floor any
  signal-based design pays for Celery's dispatch);
- recipe: prometheus_client in signals (``_recipe.py``);
- otel_port: the recipe ported to an SDK MeterProvider + Prometheus reader, recorded in
  the receivers;
- ours_direct: our instrumentor owning the provider (solo/threads pool);
- ours_child: our instrumentor in prefork pool-child mode, drained by the parent.

``--task-work-us W`` makes every task body burn W us of CPU. With the default (0) the
child sends faster than the drain records, the socket queue fills, and the figures
include our refused-send path; with ``--task-work-us 50`` the drain keeps up and wakes
for every datagram, as in a real worker.

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

MODES = ("bare", "noop_receivers", "recipe", "otel_port", "ours_direct", "ours_child")
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
        # Set by our task_received receiver in the main process; the request carries
        # them into the child (present for every mode; only ours reads them).
        "otel_celery_received_at": time.time(),
        "otel_celery_queue": QUEUE,
    }


def _run_tasks(task: Any, count: int, failure_every: int, work_us: float = 0.0) -> None:
    """``count`` executions' worth of what Celery's tracer does around a task.

    ``work_us``: CPU the task body burns (a busy loop), so that a drain can keep up.
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
    from otel_celery_metrics.settings import Settings

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
    elif mode == "ours_direct":
        provider, registry = _sdk_provider()
        _instrument_ours(provider)
        counted = lambda: _sample_sum(registry, "celery_tasks_total")  # noqa: E731
    tasks = args.tasks
    _run_tasks(task, args.warmup, args.failure_every, args.task_work_us)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    _run_tasks(task, tasks, args.failure_every, args.task_work_us)
    wall1, cpu1 = time.perf_counter(), time.process_time()
    if mode == "ours_child":
        # What a pool child does on exit: the bridge sends anything still pending.
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    return {
        "child_wall_us": (wall1 - wall0) / tasks * 1e6,
        "child_cpu_us": (cpu1 - cpu0) / tasks * 1e6,
        "counted": counted() if counted else None,
    }


def run_one(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fork a pool child that runs the tasks; the parent plays the worker's main process."""
    if os.environ.get("BENCH_EXTRA_IMPORT"):
        # A module to import first, e.g. a monkeypatch to try a change to the package
        # without editing it (the profiling notes in README.md used this).
        import importlib

        importlib.import_module(os.environ["BENCH_EXTRA_IMPORT"])
    task = _make_task()
    parent_registry = None
    if mode == "ours_child":
        provider, parent_registry = _sdk_provider()
        _instrument_ours(provider)
    read_fd, write_fd = os.pipe()
    parent_cpu_before = _cpu()
    pid = os.fork()  # ours_child: our before-fork hook starts the socketpair + drain thread
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
    if mode == "ours_child":
        from otel_celery_metrics.instrumentor import CeleryMetricsInstrumentor

        # Records what is still queued and stops the drain thread (after the last datagram).
        CeleryMetricsInstrumentor().uninstrument()
    drain_cpu = _cpu() - parent_cpu_before
    tasks, warmup = args.tasks, args.warmup
    result["drain_cpu_us"] = drain_cpu / (tasks + warmup) * 1e6
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
                  f"wall {f['child_wall_us']:6.2f}  drain cpu {f['drain_cpu_us']:6.2f} us/task",
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

    print("\nmedians over rounds, us per task (extra = mode - bare in the same round)")
    print(f"{'mode':14s} {'child cpu':>9s} {'wall':>7s} {'drain':>7s} | "
          f"{'+child':>7s} {'+wall':>7s} {'+drain':>7s} {'+total':>7s}")
    totals: dict[str, list[float]] = {}
    for mode in modes:
        child = [r[mode]["child_cpu_us"] for r in runs]
        wall = [r[mode]["child_wall_us"] for r in runs]
        drain = [r[mode]["drain_cpu_us"] for r in runs]
        e_child, e_wall, e_drain = (extra(mode, k) for k in
                                    ("child_cpu_us", "child_wall_us", "drain_cpu_us"))
        totals[mode] = [c + d for c, d in zip(e_child, e_drain, strict=True)]
        print(f"{mode:14s} {_median(child):9.2f} {_median(wall):7.2f} {_median(drain):7.2f} | "
              f"{_median(e_child):+7.2f} {_median(e_wall):+7.2f} {_median(e_drain):+7.2f} "
              f"{_median(totals[mode]):+7.2f}")
    if "recipe" not in modes:
        return
    recipe_child = extra("recipe", "child_cpu_us")
    print("\nratios to the recipe's extra cost (median of per-round ratios; target <= 0.50)")
    for mode in modes:
        if mode in ("bare", "noop_receivers", "recipe"):
            continue
        child = extra(mode, "child_cpu_us")
        child_ratio = _median([c / rc for c, rc in zip(child, recipe_child, strict=True)])
        total_ratio = _median([t / rc for t, rc in zip(totals[mode], recipe_child, strict=True)])
        verdict = "met" if total_ratio <= 0.5 else "MISSED"
        print(f"{mode:14s} child-side {child_ratio:5.2f}   child+drain {total_ratio:5.2f}  "
              f"(target on child+drain: {verdict})")


if __name__ == "__main__":
    sys.exit(main())
