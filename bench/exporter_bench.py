"""Measure an event-bus exporter: events/s sustained without loss, CPU, peak RSS, memory.

Any exporter can be measured the same way: it is given as a command template with
``{broker}`` and ``{port}``, started against a private stock Redis (``redis-server`` on
its own port, default config: the pub/sub output buffer limit is 32 MB hard, 8 MB for
60 s), fed by :mod:`exporter_publisher`, and scraped over HTTP. "Shown" means
``sum(celery_task_{sent,received,started,succeeded,failed}_total)`` on ``/metrics``
reached the number of task events published; both exporters publish those names.

Scenarios:

- ``ladder``: for each rate (task events/s), a fresh exporter gets ``--tasks`` task
  lifecycles paced at that rate; a rate is *sustained* when every event shows up and
  the exporter is done within 2 s (plus its slowest scrape) of the publisher.
  Reports the highest sustained rate and, per step, CPU s per 10k events and peak RSS.
- ``burst``: one run at ``--burst-rate`` (default 14,000 events/s): lost events.
- ``drain`` (RabbitMQ): the exporter is stopped (SIGSTOP) while ``--drain-events`` are
  published, then resumed: how fast it works off a backlog held in its queue, its own
  capacity whatever rate the broker can take in, and RSS while it does.
- ``churn``: ``--churn-events`` task events with worker hostnames renamed every 2,000
  tasks; RSS sampled as it runs (flat memory = last quarter ~ second quarter).
- ``overload``: the exporter's capacity C is measured (a drain run), then a fresh
  exporter gets ``--overload-factor`` x C (default 3) for ``--overload-seconds`` (30):
  lost events, what the broker dropped, peak RSS and the backlog while it works it off.
  With ``--cpu-limit`` the exporter runs in a cgroup with that many CPUs, which lowers C
  until the broker can take in a multiple of it (a 2-core machine cannot otherwise).

``--multi N`` publishes each worker's task events as ``task.multi`` messages of N
events, as prefork workers batch them (Celery buffers up to 24); rates are task events/s.

    python bench/exporter_bench.py --setup-danihodovic ladder burst churn
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exporter_publisher import (
    TASK_EVENTS_PER_TASK,
    amqp_body,
    envelope,
    publish,
    publish_amqp,
    task_messages,
)

HERE = Path(__file__).resolve().parent
DANIHODOVIC_VENV = Path(os.environ.get("DANIHODOVIC_VENV", "/work/venv-danihodovic"))
OURS = f"{sys.executable} -m otel_celery_metrics.exporter.cli --broker-url={{broker}} " \
       "--port={port} --log-level=WARNING --worker-forget-after=5 --worker-timeout=3"
DANIHODOVIC = f"{DANIHODOVIC_VENV}/bin/python -c 'from src.cli import cli; cli()' " \
              "--broker-url={broker} --port={port} --log-level=WARNING"
_SHOWN = re.compile(
    rb"^celery_task_(?:sent|received|started|succeeded|failed)_total\{[^\n]*\} ([0-9.e+]+)$",
    re.MULTILINE,
)
# Task events the broker dropped from our RabbitMQ event queue, counted by type (ours
# only; others show nothing): shown + dropped = published when nothing went unnoticed.
_BROKER_DROPPED = re.compile(
    rb'^celery_exporter_events_dropped_total\{(?=[^\n}]*type="task-)'
    rb'(?=[^\n}]*reason="broker_)[^\n]*\} ([0-9.e+]+)$', re.MULTILINE,
)


def setup_danihodovic() -> None:
    """A separate venv with danihodovic/celery-exporter (PyPI: prometheus-exporter-celery)."""
    if (DANIHODOVIC_VENV / "bin" / "python").exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(DANIHODOVIC_VENV)], check=True)
    # It pins redis<6 while kombu 5.6+ needs redis>=6.1, so pin the last Celery/kombu that
    # accept redis 5 (its own range allows them); packaging is needed and undeclared.
    subprocess.run([str(DANIHODOVIC_VENV / "bin" / "pip"), "install", "-q",
                    "prometheus-exporter-celery==0.11.2", "celery>=5.5.2,<5.6",
                    "kombu>=5.5,<5.6", "packaging"], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A private, stock redis-server (no persistence) on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)  # polling for the port with a deadline
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class RabbitMQ:
    """A private rabbitmq-server node (own name, ports, data and cookie under a temp dir).

    Started once per bench run (about 20 s here) and shared by its runs: each exporter
    declares its own event queue, which goes when the exporter does.
    """

    SBIN = Path(os.environ.get("RABBITMQ_SBIN", "/usr/lib/rabbitmq/bin"))

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-rabbitmq-"))
        self.node = f"bench{self.port}@localhost"
        (self.dir / "enabled_plugins").write_text("[].\n")
        self.env = {**os.environ, "HOME": str(self.dir), "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(free_port()),
                    "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                    "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
                    "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
                    "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf")}
        subprocess.run([str(self.SBIN / "rabbitmq-server"), "-detached"], env=self.env,
                       check=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                import amqp

                conn = amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=1)
                conn.connect()
                conn.close()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)  # polling for the node with a deadline
        raise RuntimeError("rabbitmq-server did not start")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def stop(self) -> None:
        subprocess.run([str(self.SBIN / "rabbitmqctl"), "-n", self.node, "stop"],
                       env=self.env, check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


class CpuLimit:
    """A cgroup (v1 ``cpu`` or v2) that holds a process to ``cpus`` CPUs (needs root)."""

    def __init__(self, cpus: float) -> None:
        period = 100_000
        quota = max(1000, int(cpus * period))
        name = f"otel-celery-bench-{os.getpid()}-{free_port()}"
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.path = v1 / name
            self.path.mkdir()
            (self.path / "cpu.cfs_period_us").write_text(str(period))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        elif "cpu" in Path("/sys/fs/cgroup/cgroup.controllers").read_text().split():
            Path("/sys/fs/cgroup/cgroup.subtree_control").write_text("+cpu")
            self.path = Path("/sys/fs/cgroup") / name
            self.path.mkdir()
            (self.path / "cpu.max").write_text(f"{quota} {period}")
        else:
            raise SystemExit("--cpu-limit needs a writable cgroup cpu controller (root)")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.2)  # the last process is still being reaped


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds user+system, peak RSS bytes) of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return cpu, hwm


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Exporter:
    def __init__(self, template: str, broker: str, cpu_limit: CpuLimit | None = None) -> None:
        self.port = free_port()
        self.slowest_scrape_s = 0.0
        self.broker_dropped = 0.0
        argv = shlex.split(template.format(broker=broker, port=self.port))
        self.proc = subprocess.Popen(argv, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        if cpu_limit is not None:
            cpu_limit.add(self.proc.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited: {self.proc.stderr.read()[-2000:]!r}")
            try:
                self.scrape()
                break
            except OSError:
                time.sleep(0.1)  # polling for the port with a deadline
        time.sleep(1.0)  # let it subscribe before the first event (not a result wait)

    def scrape(self) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=60) as r:
            return bytes(r.read())

    def shown(self) -> float:
        started = time.perf_counter()
        text = self.scrape()
        self.slowest_scrape_s = max(self.slowest_scrape_s, time.perf_counter() - started)
        self.broker_dropped = sum(float(v) for v in _BROKER_DROPPED.findall(text))
        return sum(float(v) for v in _SHOWN.findall(text))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_shown(exporter: Exporter, expected: int, every: float = 1.0) -> float:
    """Scrape until ``expected`` events show (or are counted as dropped by the broker), the
    exporter dies, or 15 s pass with no progress."""
    shown, last, last_change = 0.0, -1.0, time.perf_counter()
    while True:
        if not exporter.alive():
            return shown
        try:
            shown = exporter.shown()
        except OSError:
            shown = last
        now = time.perf_counter()
        if shown + exporter.broker_dropped >= expected:
            return shown
        if shown != last:
            last, last_change = shown, now
        elif now - last_change > 15:
            return shown  # no progress for 15 s: the rest is lost
        time.sleep(every)  # scrape interval while waiting for the count (with deadline)


def _messages(
    tasks: int, churn: int, multi: int, *, amqp: bool
) -> Iterator[tuple[str, bytes, int]]:
    generated = task_messages(tasks, 200, 50, 5, churn, encode=amqp_body if amqp else envelope,
                              multi=multi)
    # Built before the clock starts (up to ~1 GB) so the publisher, not the JSON encoding,
    # sets the pace; the 1M-event churn run encodes as it goes.
    if tasks * TASK_EVENTS_PER_TASK <= 1_200_000 and not churn:
        return iter(list(generated))
    return generated


def run_once(template: str, tasks: int, rate: float, *, churn: int = 0,
             sample_rss: bool = False, rabbitmq: RabbitMQ | None = None,
             stall: bool = False, multi: int = 1,
             cpu_limit: CpuLimit | None = None, scrape_every: float = 1.0) -> dict[str, object]:
    redis = Redis() if rabbitmq is None else None
    broker_url = redis.url if redis is not None else rabbitmq.url  # type: ignore[union-attr]
    exporter = Exporter(template, broker_url, cpu_limit)
    try:
        cpu0, _ = proc_stats(exporter.proc.pid)
        expected = tasks * TASK_EVENTS_PER_TASK
        samples: list[int] = []
        backlog = [0.0]  # the most task events published and not yet shown
        progress = [0]  # task events the publisher has handed to the broker
        stop_sampling = threading.Event()

        def sampler() -> None:
            scraped = 0.0
            while not stop_sampling.wait(2.0):
                if exporter.alive():
                    samples.append(rss(exporter.proc.pid))
                    # A scrape costs the exporter CPU (a large exposition): no more often
                    # than the run's scrape interval, or it measures the scrapes.
                    if not stall and time.perf_counter() - scraped >= scrape_every:
                        scraped = time.perf_counter()
                        published = progress[0]
                        try:
                            behind = published - exporter.shown()
                        except OSError:
                            continue
                        backlog[0] = max(backlog[0], behind)

        source = _messages(tasks, churn, multi, amqp=redis is None)
        if stall:  # the backlog builds up in the broker's queue while the exporter is stopped
            exporter.proc.send_signal(signal.SIGSTOP)
        t0 = time.perf_counter()
        if sample_rss:
            threading.Thread(target=sampler, daemon=True).start()
        try:
            if redis is not None:
                messages = publish(redis.url, source, rate, progress=progress)
            else:
                messages = publish_amqp(broker_url, source, rate, progress=progress)
        finally:
            if stall:
                exporter.proc.send_signal(signal.SIGCONT)
        published_s = time.perf_counter() - t0
        shown = wait_shown(exporter, expected, scrape_every)
        done_s = time.perf_counter() - t0
        stop_sampling.set()
        alive = exporter.alive()
        cpu1, peak = proc_stats(exporter.proc.pid) if alive else (float("nan"), 0)
        return {
            "rate_target": rate, "task_events": expected, "messages": messages,
            "shown": int(shown), "exporter_alive": alive,
            # Neither shown nor counted as dropped by the broker: lost without a trace.
            "lost": int(expected - shown - exporter.broker_dropped),
            "publish_s": round(published_s, 2), "all_shown_s": round(done_s, 2),
            "events_per_s": round(shown / done_s) if done_s else 0,
            "cpu_s_per_10k": round((cpu1 - cpu0) / max(shown, 1) * 10_000, 3),
            "peak_rss_mb": round(peak / 2**20, 1),
            "slowest_scrape_s": round(exporter.slowest_scrape_s, 2),
            "rss_samples_mb": [round(s / 2**20, 1) for s in samples],
            "broker_dropped_task_events": int(exporter.broker_dropped),
            "events_per_message": multi,
            "cpu_limit": None if cpu_limit is None else "cgroup",
            "scrape_every_s": scrape_every,
            "backlog_peak_events": int(backlog[0]) if sample_rss and not stall else None,
            # With --stall: how fast the exporter worked off the backlog once resumed.
            "drain_events_per_s": round(shown / max(done_s - published_s, 1e-9))
            if stall else None,
        }
    finally:
        exporter.stop()
        if redis is not None:
            redis.stop()


def ladder(template: str, rates: list[float], tasks_per_step: int,
           rabbitmq: RabbitMQ | None = None, multi: int = 1) -> dict[str, object]:
    steps = []
    sustained = 0.0
    for rate in rates:
        tasks = max(1000, int(min(tasks_per_step, rate * 20) // TASK_EVENTS_PER_TASK))
        result = run_once(template, tasks, rate, rabbitmq=rabbitmq, multi=multi)
        # Kept up: nothing lost, and done within 2 s of the publisher plus one scrape's
        # duration (completion is seen at most one slow scrape late; more is backlog).
        slack = 2.0 + float(result["slowest_scrape_s"])  # type: ignore[arg-type]
        ok = result["lost"] == 0 and result["broker_dropped_task_events"] == 0 and \
            result["exporter_alive"] and (
            float(result["all_shown_s"]) <= float(result["publish_s"]) + slack)  # type: ignore[arg-type]
        # A rate the broker could not take in (RabbitMQ's flow control slows the
        # publisher) says nothing about the exporter: the ladder ends there, not counted.
        offered = result["task_events"] / max(float(result["publish_s"]), 1e-9)  # type: ignore[call-overload]
        result["broker_limited"] = offered < 0.9 * rate
        result["sustained"] = ok and not result["broker_limited"]
        steps.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
        if not result["sustained"]:
            break
        sustained = rate
    return {"sustained_events_per_s": sustained, "steps": steps}


def overload(template: str, *, factor: float, seconds: float, drain_events: int,
             rabbitmq: RabbitMQ | None, multi: int, cpus: float | None,
             scrape_every: float) -> dict[str, object]:
    """Capacity C from a drain run, then ``factor`` x C for ``seconds`` on a fresh exporter."""
    limit = CpuLimit(cpus) if cpus else None
    try:
        capacity = run_once(template, drain_events // TASK_EVENTS_PER_TASK, 0, sample_rss=True,
                            rabbitmq=rabbitmq, stall=True, multi=multi, cpu_limit=limit,
                            scrape_every=scrape_every)
        print(json.dumps(capacity), file=sys.stderr, flush=True)
        c = float(capacity["drain_events_per_s"])  # type: ignore[arg-type]
        rate = factor * c
        burst = run_once(template, int(rate * seconds) // TASK_EVENTS_PER_TASK, rate,
                         sample_rss=True, rabbitmq=rabbitmq, multi=multi, cpu_limit=limit,
                         scrape_every=scrape_every)
        offered = float(burst["task_events"]) / max(float(burst["publish_s"]), 1e-9)  # type: ignore[arg-type]
        burst["offered_events_per_s"] = round(offered)
        burst["offered_over_capacity"] = round(offered / max(c, 1e-9), 2)
        print(json.dumps(burst), file=sys.stderr, flush=True)
        return {"capacity_events_per_s": c, "cpus": cpus, "capacity_run": capacity,
                "burst": burst}
    finally:
        if limit is not None:
            limit.remove()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", default=["ladder", "burst", "churn"])
    parser.add_argument("--exporter", action="append", metavar="NAME=COMMAND",
                        help="command template with {broker} and {port}; repeatable "
                        "(default: ours and danihodovic's)")
    parser.add_argument("--only", choices=["otel-celery-exporter", "danihodovic"],
                        help="measure one of the two default exporters")
    parser.add_argument("--setup-danihodovic", action="store_true")
    parser.add_argument("--broker", choices=["redis", "rabbitmq", "both"], default="redis",
                        help="rabbitmq: a private rabbitmq-server node started for the run")
    parser.add_argument("--rates", default="2000,4000,6000,8000,12000,16000,24000,32000,48000")
    parser.add_argument("--tasks-per-step", type=int, default=400_000,
                        help="task events per ladder step at most (20 s of the rate)")
    parser.add_argument("--burst-rate", type=float, default=14_000)
    parser.add_argument("--burst-events", type=int, default=400_000)
    parser.add_argument("--churn-events", type=int, default=1_000_000)
    parser.add_argument("--drain-events", type=int, default=400_000)
    parser.add_argument("--churn-rate", type=float, default=20_000)
    parser.add_argument("--multi", type=int, default=1,
                        help="task events per worker message (task.multi), as prefork "
                        "workers batch them; 1 = one message per event")
    parser.add_argument("--scrape-interval", type=float, default=5.0,
                        help="overload: seconds between scrapes (each costs the exporter "
                        "CPU; the ladder scrapes every second to time completion)")
    parser.add_argument("--overload-factor", type=float, default=3.0)
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--cpu-limit", type=float,
                        help="overload: hold the exporter to this many CPUs (cgroup, root)")
    return parser


def run_scenarios(args: argparse.Namespace, name: str, template: str,
                  on: RabbitMQ | None) -> dict[str, object]:
    result: dict[str, object] = {}
    rates = [float(r) for r in args.rates.split(",")]
    if "ladder" in args.scenarios:
        result["ladder"] = ladder(template, rates, args.tasks_per_step, on, args.multi)
    if "burst" in args.scenarios:
        result["burst"] = run_once(
            template, args.burst_events // TASK_EVENTS_PER_TASK, args.burst_rate,
            sample_rss=True, rabbitmq=on, multi=args.multi)
        print(json.dumps(result["burst"]), file=sys.stderr, flush=True)
    if "drain" in args.scenarios and on is not None:
        result["drain"] = run_once(
            template, args.drain_events // TASK_EVENTS_PER_TASK, 0,
            sample_rss=True, rabbitmq=on, stall=True, multi=args.multi)
        print(json.dumps(result["drain"]), file=sys.stderr, flush=True)
    if "overload" in args.scenarios:
        result["overload"] = overload(
            template, factor=args.overload_factor, seconds=args.overload_seconds,
            drain_events=args.drain_events, rabbitmq=on, multi=args.multi,
            cpus=args.cpu_limit, scrape_every=args.scrape_interval)
    if "churn" in args.scenarios and name == "otel-celery-exporter":
        result["churn"] = run_once(
            template, args.churn_events // TASK_EVENTS_PER_TASK, args.churn_rate,
            churn=2000, sample_rss=True, rabbitmq=on, multi=args.multi)
        print(json.dumps(result["churn"]), file=sys.stderr, flush=True)
    return result


def main() -> None:
    args = build_parser().parse_args()
    if args.setup_danihodovic:
        setup_danihodovic()
    exporters = dict(e.split("=", 1) for e in args.exporter) if args.exporter else {
        "otel-celery-exporter": OURS, "danihodovic": DANIHODOVIC}
    if args.only:
        exporters = {args.only: exporters[args.only]}
    if shutil.which("redis-server") is None and args.broker != "rabbitmq":
        sys.exit("redis-server is not on PATH")
    brokers = ["redis", "rabbitmq"] if args.broker == "both" else [args.broker]
    rabbitmq = RabbitMQ() if "rabbitmq" in brokers else None
    report: dict[str, dict[str, object]] = {}
    try:
        for broker in brokers:
            on = rabbitmq if broker == "rabbitmq" else None
            for name, template in exporters.items():
                key = f"{name} on {broker}"
                print(f"== {key}", file=sys.stderr, flush=True)
                report[key] = run_scenarios(args, name, template, on)
    finally:
        if rabbitmq is not None:
            rabbitmq.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
