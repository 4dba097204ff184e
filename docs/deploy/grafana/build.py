"""Builds the Grafana dashboards in this directory and the panel list of docs/dashboards.md.

    python docs/deploy/grafana/build.py          # rewrites celery-*.json and docs/dashboards.md

Generated rather than hand-written: every panel is one entry below (title, the question it
answers, its queries and which mode has data for them), so the JSON, the panel list in
docs/dashboards.md and the tests (tests/unit/test_operator_kit.py checks these files are
what this script writes and name only real series; tests/integration/test_operator_kit_e2e.py
runs every query against real data, expecting data where ``modes`` says) cannot drift apart.
Hand-edited Grafana JSON also carries thousands of lines of defaults a reviewer cannot read.

Queries read raw series, not the recording rules, so the dashboards work before the rules
are deployed and ``$__rate_interval`` follows the zoom. Selectors use ``=~`` on the
multi-value variables (Grafana turns a selection into a regex).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent.parent / "dashboards.md"

#: Which way out produces data for a query: in-process workers, the standalone exporter.
BOTH = ("inprocess", "exporter")
INPROCESS = ("inprocess",)
EXPORTER = ("exporter",)
#: Empty in the test workload on purpose (nothing dropped, no overflow).
NONE: tuple[str, ...] = ()

SEL = 'job=~"$job",queue=~"$queue",task_name=~"$task"'
JOB = 'job=~"$job"'
JOBQ = 'job=~"$job",queue=~"$queue"'
TASK = 'job=~"$job",queue=~"$queue",task_name="$task"'


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str
    modes: tuple[str, ...]


@dataclass(frozen=True)
class Panel:
    title: str
    question: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass
class Dashboard:
    uid: str
    title: str
    file: str
    description: str
    rows: tuple[Row, ...]
    task_all: bool = True
    tags: list[str] = field(default_factory=lambda: ["celery", "otel-celery-metrics"])


def _quantiles(metric: str, sel: str, by: str, legend: str) -> tuple[Target, ...]:
    by_le = f"{by}, le" if by else "le"
    return tuple(
        Target(
            f"histogram_quantile({q}, sum by ({by_le}) (rate({metric}_bucket{{{sel}}}"
            f"[$__rate_interval])))",
            f"p{round(float(q) * 100)} {legend}".strip(),
            BOTH,
        )
        for q in ("0.5", "0.95", "0.99")
    )


def _failure_ratio(sel: str, by: str) -> str:
    """FAILURE / (SUCCESS + FAILURE): 0 for a task that never failed, absent without runs."""

    def rate(state: str) -> str:
        return f"sum by ({by}) (rate(celery_tasks_total{{{sel},{state}}}[$__rate_interval]))"

    failed, succeeded = rate('state="FAILURE"'), rate('state="SUCCESS"')
    finished = rate('state=~"SUCCESS|FAILURE"')
    return f"({failed} or 0 * {succeeded}) / ({finished} > 0)"


WORKERS_UP = Panel(
    "Workers up",
    "How many workers are alive? Exporter: heartbeats (celery_worker_up); in-process: "
    "workers whose metrics are current.",
    (Target(f"sum by (job) (celery_worker_up{{{JOB}}}) or count by (job) "
            f"(group by (job, instance) (otel_celery_metrics_dropped_total{{{JOB}}}))",
            "{{job}}", BOTH),),
    kind="stat", width=6,
)

OVERVIEW = Dashboard(
    uid="otel-celery-overview",
    title="Celery: overview",
    file="celery-overview.json",
    description="Throughput, failures, latency, backlog, workers and the metrics pipeline "
    "(otel-celery-metrics, in-process or standalone exporter).",
    rows=(
        Row("Throughput and failures", (
            Panel("Task outcomes per second by state",
                  "How many tasks end per second, and in which state (SUCCESS, FAILURE, RETRY, "
                  "REVOKED, REJECTED, IGNORED)?",
                  (Target(f"sum by (state) (rate(celery_tasks_total{{{SEL}}}[$__rate_interval]))",
                          "{{state}}", BOTH),), unit="ops"),
            Panel("Failure ratio by task",
                  "Which tasks fail, as a share of their finished runs (FAILURE / SUCCESS + "
                  "FAILURE)? A task that never failed reads 0.",
                  (Target(_failure_ratio(SEL, "task_name"), "{{task_name}}", BOTH),),
                  unit="percentunit"),
            Panel("Failures per second by exception",
                  "Which exception classes fail which tasks?",
                  (Target(f"sum by (task_name, exception_type) (rate(celery_task_failures_total"
                          f"{{{SEL}}}[$__rate_interval]))",
                          "{{task_name}} {{exception_type}}", BOTH),), unit="ops"),
            Panel("Tasks in the time range by state",
                  "How many tasks ended in the selected time range, per state?",
                  (Target(f"sum by (state) (increase(celery_tasks_total{{{SEL}}}[$__range]))",
                          "{{state}}", BOTH),), kind="bargauge"),
            Panel("Published and received per second",
                  "Do workers take messages as fast as producers publish them? (Published "
                  "needs instrumented producers or, with the exporter, task-sent events.)",
                  (Target(f"sum by (queue) (rate(celery_tasks_published_total{{{SEL}}}"
                          f"[$__rate_interval]))", "published {{queue}}", BOTH),
                   Target(f"sum by (queue) (rate(celery_tasks_received_total{{{SEL}}}"
                          f"[$__rate_interval]))", "received {{queue}}", BOTH)),
                  unit="ops", width=24),
        )),
        Row("Latency", (
            Panel("Runtime quantiles",
                  "How long do tasks run (p50, p95, p99 over the selected tasks)?",
                  _quantiles("celery_task_runtime_seconds", SEL, "", ""), unit="s"),
            Panel("Queue wait quantiles by queue",
                  "How long do tasks wait from publish (or their ETA) to start, per queue?",
                  _quantiles("celery_task_queue_wait_seconds", SEL, "queue", "{{queue}}"),
                  unit="s"),
            Panel("Slowest tasks (p95 runtime)",
                  "Which tasks take longest?",
                  (Target("topk(10, histogram_quantile(0.95, sum by (task_name, le) "
                          f"(rate(celery_task_runtime_seconds_bucket{{{SEL}}}[$__rate_interval]))))",
                          "{{task_name}}", BOTH),), unit="s", width=24),
        )),
        Row("Backlog and workers", (
            Panel("Broker backlog by queue (exporter)",
                  "How many messages wait in the broker? Only the standalone exporter reads "
                  "queue depth.",
                  (Target(f"sum by (queue) (celery_queue_messages{{{JOBQ}}})", "{{queue}}",
                          EXPORTER),)),
            Panel("Tasks waiting inside workers (in-process)",
                  "How many tasks did workers take but not start: reserved (waiting for a "
                  "free pool process) or scheduled (waiting for their ETA/countdown)?",
                  (Target(f"sum by (queue) (celery_tasks_reserved{{{SEL}}})",
                          "{{queue}} reserved", INPROCESS),
                   Target(f"sum by (queue) (celery_tasks_scheduled{{{SEL}}})",
                          "{{queue}} scheduled", INPROCESS))),
            WORKERS_UP,
            Panel("Executing by worker",
                  "How busy is each worker? In-process: per instance; exporter: per hostname "
                  "from heartbeats.",
                  (Target(f"sum by (instance) (celery_tasks_executing{{{SEL}}})",
                          "{{instance}}", BOTH),
                   Target(f"max by (hostname) (celery_worker_tasks_active{{{JOB}}})",
                          "{{hostname}}", EXPORTER)), width=6),
            Panel("Saturation",
                  "Is any worker out of pool processes? Busy / pool size per worker, 1 = full "
                  "(exporter: per hostname; in-process: per instance).",
                  (Target(f"max by (hostname) (celery_worker_tasks_active{{{JOB}}}) / "
                          f"(max by (hostname) (celery_worker_processes{{{JOB}}}) > 0)",
                          "{{hostname}} busy/pool", EXPORTER),
                   Target(f"sum by (instance) (celery_tasks_executing{{{SEL}}}) / "
                          f"(max by (instance) (celery_worker_pool_processes{{{JOB}}}) > 0)",
                          "{{instance}} busy/pool", INPROCESS)), unit="percentunit"),
            Panel("Longest-running execution by task (in-process)",
                  "Is a task stuck? Seconds since the oldest running execution of each task "
                  "started (0 when none runs), and runs past their soft time limit.",
                  (Target(f"max by (task_name) (celery_tasks_executing_oldest_age_seconds"
                          f"{{{SEL}}})", "{{task_name}}", INPROCESS),
                   Target(f"sum by (task_name) (celery_tasks_past_soft_time_limit{{{SEL}}})",
                          "{{task_name}} past soft limit", NONE)), unit="s", width=24),
            Panel("Throughput per worker",
                  "Is work spread over the workers? (For the exporter, one series for the "
                  "fleet it watches.)",
                  (Target(f"sum by (instance) (rate(celery_tasks_total{{{SEL}}}"
                          f"[$__rate_interval]))", "{{instance}}", BOTH),), unit="ops"),
        )),
        Row("Pipeline health", (
            Panel("Measurements dropped by reason",
                  "Are we losing measurements (pool buffer full, undecodable, internal error, "
                  "a collection that timed out waiting)? Should be 0.",
                  (Target(f"sum by (instance, reason) (rate(otel_celery_metrics_dropped_total"
                          f"{{{JOB}}}[$__rate_interval]))", "{{instance}} {{reason}}",
                          INPROCESS),), unit="ops", width=8),
            Panel("Cardinality overflow by attribute",
                  "Are task names, queues, beat schedule entries or series past their caps and "
                  "folded into __overflow__? Should be 0.",
                  (Target(f"sum by (instance, attribute) (rate(otel_celery_metrics_overflow_total"
                          f"{{{JOB}}}[$__rate_interval]))", "{{instance}} {{attribute}}",
                          INPROCESS),), unit="ops", width=8),
            Panel("Scrape targets up",
                  "Does Prometheus reach every /metrics endpoint (workers scraped directly, "
                  "the exporter, or the Collector)?",
                  (Target(f"up{{{JOB}}}", "{{instance}}", BOTH),), width=8),
            Panel("Exporter: events received per second by type",
                  "Does the exporter receive the event stream?",
                  (Target(f"sum by (type) (rate(celery_exporter_events_received_total{{{JOB}}}"
                          f"[$__rate_interval]))", "{{type}}", EXPORTER),), unit="ops", width=8),
            Panel("Exporter: events not counted",
                  "Which events did the exporter drop, and why (undecodable, invalid field, "
                  "backlog full, RabbitMQ queue full or expired; filtered is on purpose)?",
                  (Target(f"sum by (type, reason) (rate(celery_exporter_events_dropped_total"
                          f"{{{JOB}}}[$__rate_interval]))", "{{type}} {{reason}}", NONE),),
                  unit="ops", width=8),
            Panel("Exporter: broker connection",
                  "Is the exporter connected to the broker, and how often did it reconnect in "
                  "the time range?",
                  (Target(f"max by (instance) (celery_exporter_broker_connected{{{JOB}}})",
                          "connected {{instance}}", EXPORTER),
                   Target(f"sum by (instance) (increase(celery_exporter_broker_reconnects_total"
                          f"{{{JOB}}}[$__range]))", "reconnects {{instance}}", EXPORTER)),
                  width=8),
            Panel("Exporter: age of events and probes",
                  "Is the data current: seconds since the last event, age of the last queue "
                  "and inspect probe?",
                  (Target(f"max by (instance) (celery_exporter_last_event_age_seconds{{{JOB}}})",
                          "last event {{instance}}", EXPORTER),
                   Target(f"max by (instance, probe) (celery_exporter_probe_age_seconds{{{JOB}}})",
                          "probe {{probe}}", EXPORTER)), unit="s", width=12),
            Panel("Exporter: workers without task events",
                  "Are there workers whose tasks the exporter cannot see (task events off)?",
                  (Target(f"max by (instance) (celery_exporter_workers_without_task_events"
                          f"{{{JOB}}})", "{{instance}}", EXPORTER),), width=12),
        )),
    ),
)

TASK_VIEW = Dashboard(
    uid="otel-celery-task",
    title="Celery: task",
    file="celery-task.json",
    description="One task: outcomes, failures, runtime and queue wait (otel-celery-metrics).",
    task_all=False,
    rows=(
        Row("Outcomes", (
            Panel("Outcomes per second by state",
                  "How often does this task end, and how?",
                  (Target(f"sum by (state) (rate(celery_tasks_total{{{TASK}}}[$__rate_interval]))",
                          "{{state}}", BOTH),), unit="ops"),
            Panel("Failure ratio",
                  "What share of this task's finished runs fail?",
                  (Target(_failure_ratio(TASK, "task_name"), "{{task_name}}", BOTH),),
                  unit="percentunit"),
            Panel("Failures per second by exception",
                  "Which exceptions does this task raise?",
                  (Target(f"sum by (exception_type) (rate(celery_task_failures_total{{{TASK}}}"
                          f"[$__rate_interval]))", "{{exception_type}}", BOTH),), unit="ops"),
            Panel("In the time range by state",
                  "How many runs of this task ended in the time range, per state?",
                  (Target(f"sum by (state) (increase(celery_tasks_total{{{TASK}}}[$__range]))",
                          "{{state}}", BOTH),), kind="bargauge"),
        )),
        Row("Latency", (
            Panel("Runtime quantiles", "How long does this task run?",
                  _quantiles("celery_task_runtime_seconds", TASK, "", ""), unit="s"),
            Panel("Runtime distribution",
                  "How are runtimes spread over the buckets (a heatmap shows two populations "
                  "that a quantile hides)?",
                  (Target(f"sum by (le) (increase(celery_task_runtime_seconds_bucket{{{TASK}}}"
                          f"[$__rate_interval]))", "{{le}}", BOTH),), kind="heatmap"),
            Panel("Queue wait quantiles by reference",
                  "How long does this task wait before it starts, measured from publish, "
                  "from its ETA, or from receipt (producer not instrumented)?",
                  _quantiles("celery_task_queue_wait_seconds", TASK, "wait_from",
                             "{{wait_from}}"), unit="s", width=24),
        )),
        Row("Flow", (
            Panel("Published, received, finished per second",
                  "Does this task's flow balance: published, taken by workers, ended?",
                  (Target(f"sum(rate(celery_tasks_published_total{{{TASK}}}[$__rate_interval]))",
                          "published", BOTH),
                   Target(f"sum(rate(celery_tasks_received_total{{{TASK}}}[$__rate_interval]))",
                          "received", BOTH),
                   Target(f"sum(rate(celery_tasks_total{{{TASK}}}[$__rate_interval]))",
                          "ended", BOTH)), unit="ops"),
            Panel("Executing and waiting in workers",
                  "How many runs of this task execute now, and how many wait inside workers "
                  "(in-process only)?",
                  (Target(f"sum(celery_tasks_executing{{{TASK}}})", "executing", BOTH),
                   Target(f"sum(celery_tasks_prefetched{{{TASK}}})", "prefetched", INPROCESS))),
        )),
    ),
)

DASHBOARDS = (OVERVIEW, TASK_VIEW)

#: The series each variable lists values from (``label_values(<selector>, <label>)``).
VARIABLE_SOURCES = {
    "job": '{__name__=~"celery_tasks_total|otel_celery_metrics_dropped_total|'
           'celery_exporter_broker_connected"}',
    "queue": '{__name__=~"celery_tasks_total|celery_queue_messages",job=~"$job"}',
    "task": 'celery_tasks_total{job=~"$job",queue=~"$queue"}',
}


# --- Grafana's own builders (grafana-foundation-sdk) ------------------------------------
# The panel list above is ours; the dashboard model, its defaults and its JSON are the SDK's.


def _sdk() -> Any:
    try:
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        sys.exit("build.py needs Grafana's SDK: pip install 'otel-celery-metrics[dashboards]'")
    from grafana_foundation_sdk.builders import (
        bargauge,
        common,
        heatmap,
        prometheus,
        stat,
        timeseries,
    )
    from grafana_foundation_sdk.builders import dashboard as builders
    from grafana_foundation_sdk.models import common as common_models
    from grafana_foundation_sdk.models import dashboard as models
    from grafana_foundation_sdk.models import prometheus as prometheus_models

    return SimpleNamespace(
        builders=builders, models=models, common=common, common_models=common_models,
        prometheus=prometheus, prometheus_models=prometheus_models,
        panels={"timeseries": timeseries, "stat": stat, "bargauge": bargauge,
                "heatmap": heatmap},
    )


def _variables(sdk: Any, dash: Dashboard) -> list[Any]:
    m, b = sdk.models, sdk.builders
    ds = m.DataSourceRef(type_val="prometheus", uid="${datasource}")
    out: list[Any] = [b.DatasourceVariable("datasource").label("Data source").type("prometheus")]
    for name, label in (("job", "job"), ("queue", "queue"), ("task", "task_name")):
        multi = dash.task_all or name != "task"
        variable = (b.QueryVariable(name).label(name).datasource(ds)
                    .query(f"label_values({VARIABLE_SOURCES[name]}, {label})")
                    .refresh(m.VariableRefresh.ON_TIME_RANGE_CHANGED)
                    .sort(m.VariableSort.ALPHABETICAL_ASC).multi(multi).include_all(multi))
        if multi:
            variable = variable.all_value(".*").current(
                m.VariableOption(text="All", value="$__all"))
        out.append(variable)
    return out


def _panel(sdk: Any, p: Panel, pid: int, x: int, y: int) -> Any:
    m, c, cm, pm = sdk.models, sdk.common, sdk.common_models, sdk.prometheus_models
    ds = m.DataSourceRef(type_val="prometheus", uid="${datasource}")
    panel = (sdk.panels[p.kind].Panel().id(pid).title(p.title).description(p.question)
             .datasource(ds).unit(p.unit).grid_pos(m.GridPos(h=8, w=p.width, x=x, y=y)))
    for i, t in enumerate(p.targets):
        query = (sdk.prometheus.Dataquery().ref_id(chr(ord("A") + i)).datasource(ds)
                 .expr(t.expr).legend_format(t.legend))
        query = query.instant() if p.kind == "bargauge" else query.range()
        if p.kind == "heatmap":
            query = query.format(pm.PromQueryFormat.HEATMAP)
        panel = panel.with_target(query)
    last = c.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
    if p.kind == "timeseries":
        panel = (panel.legend(c.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                              .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
                 .tooltip(c.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                          .sort(cm.SortOrder.DESCENDING)))
    elif p.kind == "heatmap":
        h = sdk.panels["heatmap"]
        panel = (panel.calculate(False).cell_gap(1)
                 .y_axis(h.YAxisConfig().unit("s"))
                 .color(h.HeatmapColorOptions().mode("scheme").scheme("Oranges")))
    elif p.kind == "bargauge":
        panel = (panel.display_mode(cm.BarGaugeDisplayMode.GRADIENT)
                 .orientation(cm.VizOrientation.HORIZONTAL).reduce_options(last))
    elif p.kind == "stat":
        panel = (panel.reduce_options(last).color_mode(cm.BigValueColorMode.VALUE)
                 .graph_mode(cm.BigValueGraphMode.AREA))
    return panel


def render(dash: Dashboard) -> dict[str, Any]:
    """The dashboard model, built with the SDK's builders, as plain JSON data."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    sdk = _sdk()
    m = sdk.models
    board = (sdk.builders.Dashboard(dash.title).uid(dash.uid).description(dash.description)
             .tags(dash.tags).timezone("browser").editable()
             .tooltip(m.DashboardCursorSync.CROSSHAIR).refresh("30s").time("now-3h", "now"))
    for variable in _variables(sdk, dash):
        board = board.with_variable(variable)
    pid, y = 1, 0
    for row in dash.rows:
        board = board.with_row(sdk.builders.Row(row.title).id(pid)
                               .grid_pos(m.GridPos(h=1, w=24, x=0, y=y)))
        pid, y, x = pid + 1, y + 1, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y = 0, y + 8
            board = board.with_panel(_panel(sdk, p, pid, x, y))
            pid, x = pid + 1, x + p.width
        y += 8
    model: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(board.build()))
    return model


def render_json(dash: Dashboard) -> str:
    return json.dumps(render(dash), indent=2) + "\n"


MD_BEGIN = "<!-- panels: generated by docs/deploy/grafana/build.py -->"
MD_END = "<!-- end of generated panels -->"
_MODE_NOTE = {BOTH: "", INPROCESS: " *(in-process only)*", EXPORTER: " *(exporter only)*",
              NONE: ""}


def render_panel_list() -> str:
    lines = [MD_BEGIN, ""]
    for dash in DASHBOARDS:
        lines += [f"### {dash.title} (`{dash.file}`)", ""]
        for row in dash.rows:
            lines += [f"**{row.title}**", ""]
            for p in row.panels:
                modes = {t.modes for t in p.targets}
                note = _MODE_NOTE[modes.pop()] if len(modes) == 1 else ""
                lines.append(f"- **{p.title}**{note}: {p.question}")
            lines.append("")
    lines.append(MD_END)
    return "\n".join(lines)


def docs_with_panel_list(text: str) -> str:
    head, _, rest = text.partition(MD_BEGIN)
    _, _, tail = rest.partition(MD_END)
    return head + render_panel_list() + tail


def main() -> None:
    for dash in DASHBOARDS:
        (HERE / dash.file).write_text(render_json(dash))
    DOCS.write_text(docs_with_panel_list(DOCS.read_text()))
    sys.stdout.write("wrote " + ", ".join(d.file for d in DASHBOARDS) + f" and {DOCS.name}\n")


if __name__ == "__main__":
    main()
