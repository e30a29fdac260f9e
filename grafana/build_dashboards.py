"""Writes cascade's Grafana dashboards (``grafana/dashboards/*.json``) from one description.

Every panel queries the provisioned InfluxDB datasource (uid ``cascade-influx``) in raw
InfluxQL, the one query language InfluxDB 1.x, 2.x (DBRP mapping) and 3.x all answer.
Time series use ``$timeFilter`` and ``GROUP BY time($__interval)``; stat and table
panels aggregate the whole time range (``$timeFilter`` only). The schema the queries
read is docs/telemetry.md.

    python grafana/build_dashboards.py           # rewrite the JSON files
    python grafana/build_dashboards.py --check   # exit 1 if a committed file differs

The JSON is committed; ``tests/test_grafana.py`` checks that it is this script's output.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
Query = tuple[str, str]  # (InfluxQL, legend alias)

DATASOURCE_UID = "cascade-influx"
DATASOURCE: JSON = {"type": "influxdb", "uid": DATASOURCE_UID}
OUT_DIR = Path(__file__).resolve().parent / "dashboards"
TAG = "cascade"
GRID_COLUMNS = 24

# Conditions on template variables: regex matches, so multi-value and "All" selections work too.
DEPLOYMENT = '"deployment" =~ /^$deployment$/'
DEVICE = '"device" =~ /^$device$/'
DEVICE_HEALTH = '"role" = \'device\' AND "agent" =~ /^$device$/'  # health points of the selected devices
ANY_DEVICE = "\"role\" = 'device'"
AGENT = '"agent" =~ /^$agent$/'
TIMEOUT = "\"outcome\" = 'timeout'"

COUNT = 'count("frame")'  # every frames point has the integer field "frame"
PER_S = " * 1000 / $__interval_ms"  # a count per interval → per second
COUNTER = ("lastNotNull", "max")  # legend figures of a counter


# --- queries -------------------------------------------------------------------------------


def select(
    fields: str,
    measurement: str,
    *where: str,
    by: Sequence[str] = (),
    fill: str = "none",
    over_time: bool = True,
    tail: str = "",
    scope: str = DEPLOYMENT,
) -> str:
    """An InfluxQL statement on ``measurement`` of the selected deployment within the dashboard's time range.

    ``over_time`` groups by ``time($__interval)`` (time series); without it the statement
    aggregates the whole range (stat and table panels). ``by`` are tags to group by too.
    ``scope`` is the condition that picks what the dashboard shows (the deployment, unless said).
    """
    conditions = " AND ".join(["$timeFilter", scope, *where])
    groups = (["time($__interval)"] if over_time else []) + [f'"{tag}"' for tag in by]
    group = f" GROUP BY {', '.join(groups)}" if groups else ""
    filled = f" fill({fill})" if over_time else ""
    return f'SELECT {fields} FROM "{measurement}" WHERE {conditions}{group}{filled}{tail}'


def percentile(field: str, p: int, *where: str, by: Sequence[str] = (), over_time: bool = True) -> str:
    """The ``p``-th percentile of a frames field."""
    return select(f'percentile("{field}", {p})', "frames", *where, by=by, over_time=over_time)


# --- panels (their size rides along in gridPos; layout() places them) -----------------------


def _target(query: str, alias: str, ref: int, fmt: str = "time_series") -> JSON:
    t: JSON = {"datasource": DATASOURCE, "refId": chr(ord("A") + ref), "rawQuery": True, "query": query}
    t["resultFormat"] = fmt
    if alias:
        t["alias"] = alias
    return t


def _panel(kind: str, title: str, description: str, queries: Sequence[Query], w: int, h: int, fmt: str) -> JSON:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "gridPos": {"w": w, "h": h},
        "datasource": DATASOURCE,
        "targets": [_target(q, alias, i, fmt) for i, (q, alias) in enumerate(queries)],
    }


def timeseries(
    title: str,
    description: str,
    *queries: Query,
    w: int = 12,
    h: int = 8,
    unit: str = "short",
    stacked: bool = False,
    minimum: float | None = 0,
    maximum: float | None = None,
    axis_label: str = "",
    calcs: Sequence[str] = ("mean", "max"),
    points: bool = False,
) -> JSON:
    """A time-series panel: lines, or stacked areas; with ``points``, every point drawn (sparse series)."""
    defaults: JSON = {"unit": unit}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    defaults["custom"] = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 60 if stacked else 10,
        "showPoints": "always" if points else "never",
        "spanNulls": True,
        "axisLabel": axis_label,
        "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
    }
    return _panel("timeseries", title, description, queries, w, h, "time_series") | {
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": list(calcs)},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str,
    description: str,
    query: str,
    *,
    alias: str = "",
    w: int = 4,
    h: int = 4,
    unit: str = "short",
    decimals: int | None = None,
    steps: Sequence[tuple[float | None, str]] = ((None, "blue"),),
) -> JSON:
    """Figures over the whole time range (``query`` has no ``GROUP BY time``): one per series."""
    defaults: JSON = {"unit": unit, "noValue": "0" if unit == "short" else "no data", "color": {"mode": "thresholds"}}
    if decimals is not None:
        defaults["decimals"] = decimals
    defaults["thresholds"] = {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}
    return _panel("stat", title, description, [(query, alias)], w, h, "time_series") | {
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
    }


def table(title: str, description: str, query: str, *, w: int = 24, h: int = 8) -> JSON:
    """The rows of a raw query (``resultFormat: table``)."""
    return _panel("table", title, description, [(query, "")], w, h, "table") | {
        "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}},
    }


def heatmap(title: str, description: str, query: str, *, unit: str, w: int = 12, h: int = 9) -> JSON:
    """A heatmap Grafana buckets itself (log scale) from the raw values ``query`` returns."""
    return _panel("heatmap", title, description, [(query, "")], w, h, "time_series") | {
        "fieldConfig": {
            "defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False}}},
            "overrides": [],
        },
        "options": {
            "calculate": True,
            "calculation": {"yBuckets": {"mode": "count", "value": "24", "scale": {"type": "log", "log": 2}}},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential", "exponent": 0.5, "steps": 64},
            "yAxis": {"axisPlacement": "left", "unit": unit},
            "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "filterValues": {"le": 1e-9},
        },
    }


# --- dashboards ----------------------------------------------------------------------------


def variable(name: str, label: str, query: str, *, multi: bool) -> JSON:
    """A query variable; a multi-value one offers "All" and starts there."""
    current: JSON = {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {}
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,  # on every time-range change: new devices and agents appear
        "multi": multi,
        "includeAll": multi,
        "current": current,
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


DEPLOYMENT_VAR = variable(
    "deployment", "Deployment", 'SHOW TAG VALUES FROM "frames" WITH KEY = "deployment"', multi=False
)
DEVICE_VAR = variable(
    "device", "Device", f'SHOW TAG VALUES FROM "frames" WITH KEY = "device" WHERE {DEPLOYMENT}', multi=True
)


def agent_var(measurement: str) -> JSON:
    """The agents that wrote ``measurement`` in the selected deployment."""
    query = f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "agent" WHERE {DEPLOYMENT}'
    return variable("agent", "Agent", query, multi=True)


AGENT_STARTS: JSON = {
    "name": "Agent starts",
    "datasource": DATASOURCE,
    "enable": True,
    "iconColor": "rgba(150, 150, 150, 0.6)",
    "query": f'SELECT "model", "agent", "role", "config_digest" FROM "runs" WHERE $timeFilter AND {DEPLOYMENT}',
    "textColumn": "model",
    "tagsColumn": "agent,role,config_digest",
}


def layout(rows: Sequence[Sequence[JSON]]) -> list[JSON]:
    """Panels left to right in rows, ids 1, 2, ...; a row is as tall as its tallest panel."""
    panels: list[JSON] = []
    y = 0
    for row in rows:
        x = 0
        for panel in row:
            w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
            if x + w > GRID_COLUMNS:
                raise ValueError(f"row overflows the {GRID_COLUMNS}-column grid at {panel['title']!r}")
            panels.append({"id": len(panels) + 1, **panel, "gridPos": {"x": x, "y": y, "w": w, "h": h}})
            x += w
        y += max(p["gridPos"]["h"] for p in row)
    return panels


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[JSON],
    rows: Sequence[Sequence[JSON]],
    *,
    since: str = "now-1h",
    refresh: str = "10s",
    annotations: Sequence[JSON] = (AGENT_STARTS,),
) -> JSON:
    """A whole dashboard: the cascade tag, links to its siblings, the last hour (``since``), 10-second refresh."""
    return {
        "id": None,
        "uid": uid,
        "title": f"cascade / {title}",
        "description": description,
        "tags": [TAG],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": refresh,
        "time": {"from": since, "to": "now"},
        "timepicker": {},
        "timezone": "",
        "links": [
            {"title": "cascade", "type": "dashboards", "tags": [TAG], "asDropdown": True}
            | {"includeVars": True, "keepTime": True}
        ],
        "annotations": {"list": list(annotations)},
        "templating": {"list": list(variables)},
        "panels": layout(rows),
    }


def overview() -> JSON:
    """Throughput, answers per tier, offloading, accuracy, timeouts and rejected messages of a deployment."""
    stats = [
        stat("Frames answered", "Frames with an answer in the time range.", select(COUNT, "frames", over_time=False)),
        stat(
            "Accuracy",
            "mean(correct) over the frames with a known label.",
            select('mean("correct")', "frames", over_time=False),
            unit="percentunit",
            decimals=1,
        ),
        stat(
            "Offloaded",
            "Fraction of frames that left the device: mean(offloaded).",
            select('mean("offloaded")', "frames", over_time=False),
            unit="percentunit",
            decimals=1,
        ),
        stat(
            "e2e p95",
            "95th percentile of capture → answer, every path.",
            percentile("e2e_ms", 95, over_time=False),
            unit="ms",
        ),
        stat(
            "Timeouts",
            "Frames answered with the local guess at the deadline: no reply came in time.",
            select(COUNT, "frames", TIMEOUT, over_time=False),
            steps=((None, "green"), (1, "orange")),
        ),
        stat(
            "Age of Information",
            "Mean aoi_ms of the devices: how old their newest answer is.",
            select('mean("aoi_ms")', "health", ANY_DEVICE, over_time=False),
            unit="ms",
        ),
    ]
    runs = '"agent", "role", "run", "model", "model_digest", "config_digest"'
    return dashboard(
        "cascade-overview",
        "Overview",
        "Is the deployment answering, how fast, where and how well.",
        [DEPLOYMENT_VAR],
        [
            stats,
            [
                timeseries(
                    "Frames/s per device",
                    "Answered frames per second (frames points per interval).",
                    (select(COUNT + PER_S, "frames", by=["device"], fill="0"), "$tag_device"),
                    axis_label="frames/s",
                ),
                timeseries(
                    "Answers/s per tier",
                    "Who answered: the device itself or a tier.",
                    (select(COUNT + PER_S, "frames", by=["tier"], fill="0"), "$tag_tier"),
                    stacked=True,
                    axis_label="answers/s",
                ),
            ],
            [
                timeseries(
                    "Offload fraction",
                    "mean(offloaded) per device: the share of its frames sent to a tier.",
                    (select('mean("offloaded")', "frames", by=["device"]), "$tag_device"),
                    w=8,
                    unit="percentunit",
                    maximum=1,
                ),
                timeseries(
                    "Accuracy per tier",
                    "mean(correct) of the answers each tier gave (frames with a known label).",
                    (select('mean("correct")', "frames", by=["tier"]), "$tag_tier"),
                    w=8,
                    unit="percentunit",
                    maximum=1,
                ),
                timeseries(
                    "Timeouts/s",
                    "Frames answered with the local guess at the deadline, per device.",
                    (select(COUNT + PER_S, "frames", TIMEOUT, by=["device"], fill="0"), "$tag_device"),
                    w=8,
                    axis_label="timeouts/s",
                ),
            ],
            [
                timeseries(
                    "Rejected messages",
                    "Malformed or refused messages so far, by agent and kind (health rejected_* counters).",
                    (select("max(/^rejected_/)", "health", by=["agent"]), "$tag_agent $col"),
                    calcs=COUNTER,
                ),
                timeseries(
                    "e2e p95 per tier",
                    "95th percentile of capture → answer, by the tier that answered.",
                    (percentile("e2e_ms", 95, by=["tier"]), "$tag_tier"),
                    unit="ms",
                ),
            ],
            [
                table(
                    "Runs",
                    "Every agent start in the time range: model, weights digest and configuration digest.",
                    select(runs, "runs", over_time=False, tail=" ORDER BY time DESC LIMIT 200"),
                    h=7,
                )
            ],
        ],
    )


def _breakdown(tier: str, spans: Sequence[tuple[str, str]]) -> JSON:
    """Stacked means of the stages of the frames ``tier`` answered; "other" is the rest of the mean e2e."""
    where = (DEVICE, f"\"tier\" = '{tier}'", "\"outcome\" = 'remote'")
    queries = [(select(f'mean("{field}")', "frames", *where), name) for field, name in spans]
    rest = " - ".join(['mean("e2e_ms")', *(f'mean("{field}")' for field, _ in spans)])
    queries.append((select(rest, "frames", *where), "other (encoding, waits, decoding)"))
    return timeseries(
        f"Where the time goes: {tier} answers",
        f"Mean of each stage of the frames the {tier} answered, stacked; their top is the mean e2e.",
        *queries,
        unit="ms",
        stacked=True,
    )


def latency() -> JSON:
    """End-to-end percentiles per path, the stage breakdown and the e2e distribution."""
    path = ["tier", "outcome"]
    edge = [
        ("device_compute_ms", "device compute"),
        ("uplink_ms", "uplink"),
        ("edge_queue_ms", "edge queue"),
        ("edge_compute_ms", "edge compute"),
        ("downlink_ms", "downlink"),
    ]
    cloud = [*edge[:4], ("cloud_hop_ms", "edge forward → cloud end"), edge[4]]
    compute = [(select(f'mean("{tier}_compute_ms")', "frames", DEVICE), tier) for tier in ("device", "edge", "cloud")]
    return dashboard(
        "cascade-latency",
        "Latency",
        "End-to-end latency per path (tier and outcome), where it is spent, and its distribution.",
        [DEPLOYMENT_VAR, DEVICE_VAR],
        [
            [
                stat(
                    f"e2e p{p}",
                    f"p{p} of capture → answer over the time range.",
                    percentile("e2e_ms", p, DEVICE, over_time=False),
                    w=8,
                    unit="ms",
                )
                for p in (50, 95, 99)
            ],
            [
                timeseries(
                    f"e2e p{p} per path",
                    f"p{p} of capture → answer, by the tier that answered and the outcome.",
                    (percentile("e2e_ms", p, DEVICE, by=path), "$tag_tier ($tag_outcome)"),
                    w=8,
                    h=9,
                    unit="ms",
                )
                for p in (50, 95, 99)
            ],
            [_breakdown("edge", edge), _breakdown("cloud", cloud)],
            [
                heatmap(
                    "e2e distribution",
                    "Capture → answer of up to 100 frames sampled per interval, bucketed by Grafana (log scale).",
                    select('sample("e2e_ms", 100)', "frames", DEVICE),
                    unit="ms",
                ),
                timeseries(
                    "Inference time per tier",
                    "Mean compute time of a request on each tier (a whole batch's at the edge and cloud).",
                    *compute,
                    h=9,
                    unit="ms",
                ),
            ],
        ],
    )


def devices() -> JSON:
    """Per-device drill-down: throughput, latency, accuracy, offloading and the live health figures."""
    return dashboard(
        "cascade-devices",
        "Devices",
        "One device or several: how fast they are answered, how well, what they offload, their live health.",
        [DEPLOYMENT_VAR, DEVICE_VAR],
        [
            [
                timeseries(
                    "Frames/s",
                    "Answered frames per second (frames points per interval).",
                    (select(COUNT + PER_S, "frames", DEVICE, by=["device"], fill="0"), "$tag_device"),
                    axis_label="frames/s",
                ),
                timeseries(
                    "Answers/s reported",
                    "fps in the device's health: answers per second over its last 5 s.",
                    (select('mean("fps")', "health", DEVICE_HEALTH, by=["agent"]), "$tag_agent"),
                    axis_label="answers/s",
                ),
            ],
            [
                timeseries(
                    "e2e percentiles",
                    "p50, p95 and p99 of capture → answer per device.",
                    *[(percentile("e2e_ms", p, DEVICE, by=["device"]), f"$tag_device p{p}") for p in (50, 95, 99)],
                    h=9,
                    unit="ms",
                ),
                timeseries(
                    "Answers/s by outcome",
                    "local: a confident exit; remote: a tier's reply; timeout: the local guess at the deadline.",
                    (
                        select(COUNT + PER_S, "frames", DEVICE, by=["device", "outcome"], fill="0"),
                        "$tag_device $tag_outcome",
                    ),
                    h=9,
                    stacked=True,
                    axis_label="answers/s",
                ),
            ],
            [
                timeseries(
                    "Accuracy",
                    "mean(correct) per device (frames with a known label).",
                    (select('mean("correct")', "frames", DEVICE, by=["device"]), "$tag_device"),
                    w=8,
                    unit="percentunit",
                    maximum=1,
                ),
                timeseries(
                    "Offload fraction",
                    "mean(offloaded) per device.",
                    (select('mean("offloaded")', "frames", DEVICE, by=["device"]), "$tag_device"),
                    w=8,
                    unit="percentunit",
                    maximum=1,
                ),
                timeseries(
                    "Uplink bytes/s",
                    "Payload bytes the device sent: frames or activations.",
                    (select('sum("bytes_up")' + PER_S, "frames", DEVICE, by=["device"], fill="0"), "$tag_device"),
                    w=8,
                    unit="Bps",
                ),
            ],
            [
                timeseries(
                    "In flight",
                    "Requests awaiting an answer (health in_flight).",
                    (select('max("in_flight")', "health", DEVICE_HEALTH, by=["agent"]), "$tag_agent"),
                ),
                timeseries(
                    "Age of Information",
                    "now − capture time of the newest answered frame (health aoi_ms).",
                    (select('mean("aoi_ms")', "health", DEVICE_HEALTH, by=["agent"]), "$tag_agent"),
                    w=6,
                    unit="ms",
                ),
                timeseries(
                    "Late and duplicate replies",
                    "Replies that came after the deadline answer, or twice, so far (health counters).",
                    (select("max(/_replies$/)", "health", DEVICE_HEALTH, by=["agent"]), "$tag_agent $col"),
                    w=6,
                    calcs=COUNTER,
                ),
            ],
            [
                timeseries(
                    "Uplink bandwidth estimate",
                    "Probe trains timed at the receiving worker (bandwidth points; docs/telemetry.md).",
                    (
                        select('mean("mbit_s")', "bandwidth", DEVICE_HEALTH, by=["agent", "peer"]),
                        "$tag_agent → $tag_peer",
                    ),
                    w=24,
                    unit="Mbits",
                ),
            ],
        ],
    )


def agents() -> JSON:
    """Per-agent health: queues, batching, throughput, CPU, memory, drops, rejections and the InfluxDB sink."""
    by = ["agent"]

    def health(fields: str) -> str:
        return select(fields, "health", AGENT, by=by)

    return dashboard(
        "cascade-agents",
        "Agents",
        "Health of every agent (devices, edge and cloud workers) from its periodic health points.",
        [DEPLOYMENT_VAR, agent_var("health")],
        [
            [
                timeseries(
                    "Queue depth",
                    "Requests waiting in each tier worker's queue.",
                    (health('max("queue_depth")'), "$tag_agent"),
                    w=8,
                ),
                timeseries(
                    "Mean batch size",
                    "Mean size of the batches a tier worker has run so far.",
                    (health('last("mean_batch")'), "$tag_agent"),
                    w=8,
                    calcs=COUNTER,
                ),
                timeseries(
                    "Answered and forwarded /s",
                    "Answers given and requests passed on to the next tier, per second (health counters).",
                    (health('non_negative_derivative(max("answered"), 1s)'), "$tag_agent answered"),
                    (health('non_negative_derivative(max("forwarded"), 1s)'), "$tag_agent forwarded"),
                    w=8,
                    axis_label="per second",
                ),
            ],
            [
                timeseries(
                    "CPU",
                    "Process CPU since the previous sample; 100 % is one core.",
                    (health('mean("cpu_percent")'), "$tag_agent"),
                    w=8,
                    unit="percent",
                ),
                timeseries(
                    "Resident memory",
                    "RSS of each agent process.",
                    (health('max("rss_mb")'), "$tag_agent"),
                    w=8,
                    unit="mbytes",
                    calcs=COUNTER,
                ),
                timeseries(
                    "Dropped",
                    "Every drop counter so far: full queues, sensor frames, InfluxDB batches (*dropped* fields).",
                    (health("max(/dropped/)"), "$tag_agent $col"),
                    w=8,
                    calcs=COUNTER,
                ),
            ],
            [
                timeseries(
                    "Rejected messages",
                    "Malformed or refused messages so far, by kind (health rejected_* counters).",
                    (health("max(/^rejected_/)"), "$tag_agent $col"),
                    calcs=COUNTER,
                ),
                timeseries(
                    "InfluxDB sink",
                    "Batches waiting in the agent's spool, and write errors so far.",
                    (health('max("influx_backlog") AS "backlog", max("influx_errors") AS "errors"'), "$tag_agent $col"),
                    calcs=COUNTER,
                ),
            ],
        ],
    )


def clocks() -> JSON:
    """Clock offsets and round trips each agent measured to its peers."""
    pair = ["agent", "peer"]
    alias = "$tag_agent → $tag_peer"
    latest = 'last("offset_ms") AS "offset_ms", last("rtt_ms") AS "rtt_ms", last("samples") AS "samples"'
    return dashboard(
        "cascade-clocks",
        "Clocks",
        "Offset of each peer's clock from the agent's (MQTT four-timestamp exchange, minimum round trip kept).",
        [DEPLOYMENT_VAR, agent_var("clocks")],
        [
            [
                timeseries(
                    "Offset",
                    "Peer's clock minus the agent's; the device subtracts it from the peer's stamps.",
                    (select('mean("offset_ms")', "clocks", AGENT, by=pair), alias),
                    h=9,
                    unit="ms",
                    minimum=None,
                    calcs=("mean", "min", "max"),
                ),
                timeseries(
                    "Round trip",
                    "Round trip of the sample kept each round.",
                    (select('mean("rtt_ms")', "clocks", AGENT, by=pair), alias),
                    h=9,
                    unit="ms",
                ),
            ],
            [
                timeseries(
                    "Offset error bound",
                    "Half the round trip: the most the offset estimate can be off.",
                    (select('max("rtt_ms") / 2', "clocks", AGENT, by=pair), alias),
                    unit="ms",
                ),
                table(
                    "Latest estimates",
                    "Newest offset, round trip and sample count per agent and peer.",
                    select(latest, "clocks", AGENT, by=pair, over_time=False),
                    w=12,
                ),
            ],
        ],
    )


def aoi() -> JSON:
    """Age of Information per device: how old the newest answer is."""
    return dashboard(
        "cascade-aoi",
        "Age of Information",
        "Age of Information per device: now − capture time of the newest answered frame (health aoi_ms).",
        [DEPLOYMENT_VAR, DEVICE_VAR],
        [
            [
                stat(
                    "Latest AoI",
                    "The newest aoi_ms of each selected device.",
                    select('last("aoi_ms")', "health", DEVICE_HEALTH, by=["agent"], over_time=False),
                    alias="$tag_agent",
                    w=8,
                    unit="ms",
                    steps=((None, "green"), (1000, "orange"), (5000, "red")),
                ),
                stat(
                    "Mean AoI",
                    "Mean aoi_ms over the time range.",
                    select('mean("aoi_ms")', "health", DEVICE_HEALTH, over_time=False),
                    w=8,
                    unit="ms",
                ),
                stat(
                    "Max AoI",
                    "Largest aoi_ms over the time range.",
                    select('max("aoi_ms")', "health", DEVICE_HEALTH, over_time=False),
                    w=8,
                    unit="ms",
                ),
            ],
            [
                timeseries(
                    "AoI per device",
                    "Mean aoi_ms per interval.",
                    (select('mean("aoi_ms")', "health", DEVICE_HEALTH, by=["agent"]), "$tag_agent"),
                    h=9,
                    unit="ms",
                ),
                timeseries(
                    "Peak AoI per device",
                    "Largest aoi_ms per interval.",
                    (select('max("aoi_ms")', "health", DEVICE_HEALTH, by=["agent"]), "$tag_agent"),
                    h=9,
                    unit="ms",
                ),
            ],
            [
                timeseries(
                    "e2e p95 per device",
                    "For comparison: the 95th percentile of capture → answer.",
                    (percentile("e2e_ms", 95, DEVICE, by=["device"]), "$tag_device"),
                    w=24,
                    unit="ms",
                )
            ],
        ],
    )


# --- node profiles (cascade profile --influx-url; measurement "profile", docs/profiling.md) -------------

NODE = '"node" =~ /^$node$/'
PROFILE_MODEL = "\"model\" = '$model'"
PROFILE_BATCH = "\"batch\" = '$batch'"


def profile_select(fields: str, *where: str, by: Sequence[str] = (), over_time: bool = False) -> str:
    """An InfluxQL statement on the profile points of the selected nodes (profiles carry no deployment)."""
    return select(fields, "profile", *where, by=by, over_time=over_time, scope=NODE)


def profiles() -> JSON:
    """What ``cascade profile --influx-url`` wrote: each node's latest figures per model, batch and stage."""
    node_var = variable("node", "Node", 'SHOW TAG VALUES FROM "profile" WITH KEY = "node"', multi=True)
    model_var = variable(
        "model", "Model", f'SHOW TAG VALUES FROM "profile" WITH KEY = "model" WHERE {NODE}', multi=False
    )
    batch_var = variable(
        "batch",
        "Batch",
        f'SHOW TAG VALUES FROM "profile" WITH KEY = "batch" WHERE {NODE} AND {PROFILE_MODEL}',
        multi=False,
    )
    whole = "\"stage\" = 'all'"
    stages = "\"stage\" != 'all'"
    latest = 'last("median_ms") AS "alone ms", last("in_pass_median_ms") AS "in pass ms", last("p95_ms") AS "p95 ms"'
    return dashboard(
        "cascade-profiles",
        "Profiles",
        "Each node's latest cascade profile (cascade profile --influx-url): the whole model and every stage and"
        " exit head, timed alone and inside whole passes. Profiles are rare: the range starts 90 days back.",
        [node_var, model_var, batch_var],
        [
            [
                table(
                    "Whole models",
                    "The latest profile of each node, model, batch size and thread count: the whole model, every"
                    " exit computed; in pass is the same passes timed part by part.",
                    profile_select(latest, whole, by=["node", "model", "batch", "threads"]),
                    h=7,
                )
            ],
            [
                table(
                    "Stages of $model at batch $batch",
                    "Per node and stage: alone (timed by itself over and over) and in pass (timed inside whole"
                    " passes, what it costs where it runs; add these up for a split plan), the exit head reading"
                    " the stage, MACs and output bytes per image (output bytes: what a split after it sends).",
                    profile_select(
                        f'{latest}, last("exit_median_ms") AS "exit alone ms",'
                        ' last("exit_in_pass_median_ms") AS "exit in pass ms", last("macs") AS "MACs",'
                        ' last("output_bytes") AS "output bytes"',
                        PROFILE_MODEL,
                        PROFILE_BATCH,
                        stages,
                        by=["node", "stage"],
                    ),
                    h=10,
                )
            ],
            [
                timeseries(
                    "$model at batch $batch, whole model, profile by profile",
                    "Every profile of the model on each node: a step after a torch upgrade, a new OS image or"
                    " a changed thread count shows here.",
                    (
                        profile_select(
                            'last("median_ms")', PROFILE_MODEL, PROFILE_BATCH, whole, by=["node"], over_time=True
                        ),
                        "$tag_node",
                    ),
                    w=24,
                    unit="ms",
                    points=True,
                    calcs=("lastNotNull", "min", "max"),
                )
            ],
        ],
        since="now-90d",
        refresh="",
        annotations=(),
    )


DASHBOARDS = {
    "overview.json": overview,
    "latency.json": latency,
    "devices.json": devices,
    "agents.json": agents,
    "clocks.json": clocks,
    "aoi.json": aoi,
    "profiles.json": profiles,
}


def render() -> dict[str, str]:
    """Every dashboard's file name and JSON text."""
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboards to ``grafana/dashboards`` (or, with ``--check``, report those that differ)."""
    parser = argparse.ArgumentParser(description="Write cascade's Grafana dashboards.")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file is not this script's output")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT_DIR / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run python grafana/build_dashboards.py)", file=sys.stderr)
        return 1
    print(f"{'stale' if args.check else 'wrote'}: {', '.join(stale) or 'nothing, all up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
