"""Grafana provisioning and dashboards: the JSON is sound, and every panel's query answers after a real run."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from agents.datasets import SAMPLE_TAR
from agents.profiling.export import profile_points, write_points
from agents.profiling.loading import load_model
from agents.profiling.node import node_identity
from agents.profiling.stages import Effort, profile_model
from agents.telemetry.influxd import InfluxServer
from agents.transport.broker import BrokerProcess
from tests.harness import Watcher, spawn, stop, write_config

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
EXPECTED = {"overview.json", "latency.json", "devices.json", "agents.json", "clocks.json", "aoi.json", "profiles.json"}
#: Dashboards of what ``cascade profile`` writes: node profiles carry no deployment.
PROFILES = {"profiles.json"}
BUILTINS = {"timeFilter", "__interval", "__interval_ms"}
# Grafana's variable syntaxes: $name, ${name}, ${name:format}, [[name]].
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]")
DB = "cascade_grafana"


def _load(path: Path) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(path.read_text(encoding="utf-8")))


def _datasource_uid() -> str:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "cascade.yaml").read_text())
    (source,) = provisioned["datasources"]
    return str(source["uid"])


def _queries(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, InfluxQL) of every query in a dashboard: panel targets, variables and annotations."""
    for panel in dash["panels"]:
        for t in panel["targets"]:
            yield f"{dash['uid']} panel {panel['id']} {panel['title']!r} {t['refId']}", t["query"]
    for var in dash["templating"]["list"]:
        yield f"{dash['uid']} variable {var['name']}", var["query"]
    for ann in dash["annotations"]["list"]:
        yield f"{dash['uid']} annotation {ann['name']!r}", ann["query"]


def _used(query: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VARIABLE.finditer(query)}


def _datasources(node: Any) -> Iterator[Any]:
    """Every value of a "datasource" key anywhere in the JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)


# --- the JSON, no server ------------------------------------------------------------------


def test_every_dashboard_parses_and_uids_are_unique() -> None:
    assert {p.name for p in DASHBOARDS} == EXPECTED
    uids = [_load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids), uids
    assert all(isinstance(u, str) and 0 < len(u) <= 40 for u in uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panel_ids_are_unique_and_panels_fit_the_grid(path: Path) -> None:
    panels = _load(path)["panels"]
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids), ids
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24 and g["y"] >= 0 and g["h"] >= 1, (p["title"], g)
        assert p["targets"], f"panel {p['title']!r} has no query"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_datasource_is_the_provisioned_influxdb(path: Path) -> None:
    uid = _datasource_uid()
    dash = _load(path)
    found = list(_datasources(dash))
    assert found and all(ds == {"type": "influxdb", "uid": uid} for ds in found), found
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert all(t["datasource"]["uid"] == uid and t["rawQuery"] is True for t in panel["targets"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_variable_a_query_uses_is_defined(path: Path) -> None:
    dash = _load(path)
    defined = {v["name"] for v in dash["templating"]["list"]}
    assert "deployment" in defined or path.name in PROFILES
    for where, query in _queries(dash):
        assert _used(query) <= defined | BUILTINS, (where, _used(query) - defined - BUILTINS)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_use_the_time_filter_and_the_interval(path: Path) -> None:
    dash = _load(path)
    for panel in dash["panels"]:
        for t in panel["targets"]:
            assert "$timeFilter" in t["query"], (panel["title"], t["query"])
            if panel["type"] not in ("stat", "table"):  # those aggregate the whole time range
                assert "GROUP BY time($__interval)" in t["query"], (panel["title"], t["query"])
    for ann in dash["annotations"]["list"]:
        assert "$timeFilter" in ann["query"]


def test_the_dashboards_show_what_the_issue_asks_for() -> None:
    dashes = {p.name: _load(p) for p in DASHBOARDS}
    queries = {name: "\n".join(q for _, q in _queries(d)) for name, d in dashes.items()}
    variables = {name: {v["name"] for v in d["templating"]["list"]} for name, d in dashes.items()}
    assert variables["devices.json"] >= {"deployment", "device"}
    assert variables["agents.json"] >= {"deployment", "agent"} and variables["clocks.json"] >= {"deployment", "agent"}
    wanted = {
        "overview.json": [
            'mean("offloaded")',
            'mean("correct")',
            "'timeout'",
            "/^rejected_/",
            'GROUP BY time($__interval), "tier"',
        ],
        "latency.json": [
            'percentile("e2e_ms", 99)',
            "device_compute_ms",
            "uplink_ms",
            "edge_queue_ms",
            "edge_compute_ms",
            "cloud_hop_ms",
            "downlink_ms",
            '"tier", "outcome"',
        ],
        "devices.json": ['"device" =~ /^$device$/', "in_flight", "fps", "percentile", "offloaded", "correct"],
        "agents.json": ["queue_depth", "/dropped/", "cpu_percent", "rss_mb", "mean_batch"],
        "clocks.json": ["offset_ms", "rtt_ms", '"agent", "peer"'],
        "aoi.json": ["aoi_ms", "\"role\" = 'device'"],
        "profiles.json": ["in_pass_median_ms", "exit_in_pass_median_ms", "\"stage\" = 'all'", "output_bytes"],
    }
    for name, needles in wanted.items():
        missing = [n for n in needles if n not in queries[name]]
        assert not missing, (name, missing)
    assert "heatmap" in {p["type"] for p in dashes["latency.json"]["panels"]}
    assert all("=~ /^$" in q for _, q in _queries(dashes["devices.json"]) if "$device" in q)  # regex: multi-value


def test_committed_json_is_the_build_script_output() -> None:
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    render = cast(Callable[[], dict[str, str]], module.render)
    built = render()
    assert set(built) == EXPECTED
    for name, text in built.items():
        assert (GRAFANA / "dashboards" / name).read_text(encoding="utf-8") == text, (
            f"grafana/dashboards/{name} is stale: run python grafana/build_dashboards.py"
        )


def test_provisioning_takes_everything_site_specific_from_the_environment() -> None:
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "cascade.yaml").read_text())["datasources"]
    assert source["type"] == "influxdb" and source["jsonData"]["version"] == "InfluxQL"
    assert source["url"] == "${CASCADE_INFLUX_URL}" and source["user"] == "${CASCADE_INFLUX_USERNAME}"
    assert source["jsonData"]["dbName"] == source["database"] == "${CASCADE_INFLUX_DB}"
    assert source["secureJsonData"] == {"password": "${CASCADE_INFLUX_PASSWORD}"}
    assert "password" not in source and "basicAuthPassword" not in source
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "cascade.yaml").read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] in (GRAFANA / "README.md").read_text()


# --- the queries against a real InfluxDB after a real run ---------------------------------


def _series_with_values(answer: Any) -> bool:
    """Whether an InfluxDB answer has a series with a non-null value besides its time column."""
    for result in answer["results"]:
        for series in result.get("series", []):
            for row in series.get("values", []):
                if any(v is not None for v in row[1:]):
                    return True
    return False


def _errors(answer: Any) -> list[str]:
    return [str(r["error"]) for r in answer["results"] if "error" in r]


def _run_pipeline(tmp: Path, broker: BrokerProcess, watcher: Watcher, influx: InfluxServer) -> None:
    """Device, edge and cloud for a few hundred frames, writing to ``influx``; a second device times out."""
    # A fixed rate, so the run spans several 10 s intervals (derivatives need two) and health and clock rounds.
    source = {"kind": "imagefolder", "path": str(SAMPLE_TAR), "shuffle": True, "loop": True, "rate": "fixed", "fps": 20}
    dev = {"model": "device-small", "threshold": 0.85, "threads": 1, "window": 8, "source": source}
    cfg = write_config(
        tmp,
        broker,
        devices=[
            {"id": "dev1", "deadline_ms": 5000, **dev},
            # Offloaded frames answered at their deadline: timeouts. At full speed, since a paced device only
            # looks at replies and deadlines between frames, and handles replies first.
            {"id": "dev2", "deadline_ms": 1, **dev, "source": {**source, "rate": "max"}},
        ],
        tiers={
            "edge": {"model": "edge-medium", "threshold": 0.8, "forward_to": "cloud", "threads": 1, "max_wait_ms": 2},
            "cloud": {"model": "cloud-large", "threads": 1, "max_wait_ms": 2},
        },
        telemetry={
            "influx": {"url": influx.url, "database": DB, "flush_s": 0.5},
            "health_s": 1,
            "clock": {"interval_s": 2},
            "bandwidth": {"interval_s": 2},  # several trains in the run, as clock rounds
        },
    )
    tiers = [spawn(tmp, tier, "--config", str(cfg), "--id", f"{tier}-1", name=tier) for tier in ("cloud", "edge")]
    try:
        for tier in ("cloud", "edge"):
            watcher.wait_status(f"{tier}-1", b"online")
        watcher.link.publish("cascade/t/edge/requests", b"\x00not an envelope\xff" * 4, qos=1)  # rejected_*
        frames = {"dev1": 300, "dev2": 100}
        devices = [
            spawn(tmp, "device", "--config", str(cfg), "--id", d, "--frames", str(n), name=d) for d, n in frames.items()
        ]
        assert [p.wait(240) for p in devices] == [0, 0], "a device failed: see its log under the test's tmp_path"
    finally:
        codes = [stop(p) for p in tiers]
    assert codes == [0, 0], f"cloud, edge exit codes {codes}"
    assert influx.count(DB) == sum(frames.values())


def _substitute(query: str, values: dict[str, str]) -> str:
    """What Grafana sends: the macros for the last hour at a 10 s interval, variables by their values."""
    query = query.replace("$timeFilter", "time > now() - 1h")
    query = query.replace("$__interval_ms", "10000").replace("$__interval", "10s")
    return VARIABLE.sub(lambda m: values[next(g for g in m.groups() if g)], query)


def test_every_panel_query_answers_after_a_real_pipeline_run(
    tmp_path: Path, broker: BrokerProcess, watcher: Watcher, influx: InfluxServer
) -> None:
    influx.query(f'CREATE DATABASE "{DB}"')
    _run_pipeline(tmp_path, broker, watcher, influx)
    # Two nodes' profiles of the shipped device model, as cascade profile --influx-url writes them.
    profile = profile_model(load_model("device-small"), node_identity(), [1], Effort(3, 1, 0.0, 0.0), "test")
    for node in ("pi-a", "pi-b"):
        assert write_points(influx.url, DB, profile_points(profile, node)) == 5
    failures: list[str] = []
    ran = 0
    for path in DASHBOARDS:
        dash = _load(path)
        values: dict[str, str] = {}
        for var in dash["templating"]["list"]:  # in order: a variable's query may use the ones before it
            answer = influx.query(_substitute(var["query"], values), DB)
            found = [row[1] for r in answer["results"] for s in r.get("series", []) for row in s["values"]]
            assert found and not _errors(answer), (path.name, var["name"], answer)
            # "All" is what Grafana sends for a multi-value variable: (a|b|...), each value regex-escaped.
            values[var["name"]] = f"({'|'.join(re.escape(v) for v in found)})" if var["multi"] else found[0]
        for where, query in _queries(dash):
            q = _substitute(query, values)
            answer = influx.query(q, DB)
            ran += 1
            if _errors(answer) or not _series_with_values(answer):
                failures.append(f"{where}: {q}\n    -> {json.dumps(answer)[:300]}")
    assert ran > 60
    assert not failures, "queries with an error or no data:\n" + "\n".join(failures)
