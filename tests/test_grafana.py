"""Grafana dashboards and Prometheus rules in grafana/, checked without Prometheus running:
the JSON parses, every panel queries the provisioned datasource by uid, every metric a query
names is one the exporter serves (cgman.exporter.metrics) or a shipped recording rule, and every
query is valid PromQL — `promtool check rules` on the expressions written out as recording rules.

The helpers here (queries of a dashboard, variable substitution) are shared with
tests/test_prometheus.py, which evaluates the same queries against a real Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest
import yaml

from .conftest import REPO

GRAFANA = REPO / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
RULES = GRAFANA / "prometheus" / "rules.yml"
DATASOURCE_UID = "cgman-prometheus"

# Grafana's built-in variables, as a query would see them with a 1 h range and a 15 s scrape.
BUILTINS = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s", "__range_s": "3600",
            "__interval_ms": "15000"}


def promtool() -> str:
    p = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(p).exists():
        pytest.fail("promtool not found: install Debian's prometheus package (scripts/setup.sh does)")
    return p


class Query(NamedTuple):
    dashboard: str     # file name
    panel: str         # panel title
    panel_id: int
    ref: str           # refId, or the variable's name
    expr: str

    def where(self) -> str:
        return f"{self.dashboard}: panel {self.panel_id} {self.panel!r}, target {self.ref}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves are left out."""
    for p in dash.get("panels", []):
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def panel_queries(path: Path) -> list[Query]:
    dash = load(path)
    return [Query(path.name, p.get("title", ""), p["id"], t.get("refId", "?"), t.get("expr", ""))
            for p in panels(dash) for t in p.get("targets", []) if not t.get("hide")]


def variables(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dash.get("templating", {}).get("list", []))


def variable_queries(path: Path) -> list[Query]:
    """`label_values(SELECTOR, label)` of each query variable, as the PromQL selector inside it."""
    out = []
    for v in variables(load(path)):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", q, re.S)
        assert m, f"{path.name}: variable {v['name']}: expected label_values(SELECTOR, LABEL), got {q!r}"
        out.append(Query(path.name, f"variable {v['name']}", 0, v["name"], m.group(1)))
    return out


def default_values(path: Path, **chosen: str) -> dict[str, str]:
    """Values for every variable of the dashboard: query variables `.*` (Grafana's "All" with
    allValue `.*`) unless chosen, text boxes and constants their default, plus the built-ins."""
    vals = dict(BUILTINS)
    for v in variables(load(path)):
        if v.get("type") == "query":
            vals[v["name"]] = ".*"
        elif v.get("type") in ("textbox", "constant", "custom"):
            vals[v["name"]] = str(v.get("query", "")).split(",")[0].strip()
    vals.update(chosen)
    return vals


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation of `$name`, `${name}` and `${name:format}` (the format is ignored:
    values here are already regexes or numbers). An unknown variable is an error."""
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return values[name]
    return re.sub(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)", repl, expr)


def recording_rules() -> dict[str, str]:
    """record name -> expr of the shipped rules file."""
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def metric_names(expr: str) -> set[str]:
    """Names in a PromQL expression that are cgman metrics or recording rules built on them."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)       # label values are not names
    return {t for t in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if "cgman_" in t}


def contract_names() -> set[str]:
    from cgman.exporter.metrics import ALL_NAMES
    return set(ALL_NAMES)


def check_promql(queries: list[tuple[str, str]], tmp_path: Path) -> subprocess.CompletedProcess:
    """`promtool check rules` on (name, expr) pairs written as recording rules."""
    doc = {"groups": [{"name": "grafana", "rules": [{"record": n, "expr": e} for n, e in queries]}]}
    f = tmp_path / "grafana-queries.yml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    return subprocess.run([promtool(), "check", "rules", str(f)], capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------- tests
FILES = dashboard_files()
IDS = [p.name for p in FILES]


def test_both_dashboards_are_shipped():
    assert {"tenant-billing.json", "container-detail.json"} <= set(IDS)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_dashboard_is_grafana_10_json(path):
    d = load(path)
    assert d.get("uid") and d.get("title"), "uid and title: links and provisioning rely on them"
    assert 36 <= d["schemaVersion"] <= 39
    ps = [p for p in d["panels"]]
    ids = [p["id"] for p in ps] + [q["id"] for p in ps for q in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in ps:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"panel {p['id']} {p['title']!r} is wider than the grid"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_panel_queries_the_cgman_datasource_by_uid(path):
    d = load(path)
    for p in panels(d):
        where = f"panel {p['id']} {p.get('title')!r}"
        assert p.get("datasource", {}).get("uid") == DATASOURCE_UID, where
        targets = [t for t in p.get("targets", []) if not t.get("hide")]
        assert targets, f"{where} has no target"
        for t in targets:
            assert t.get("datasource", {}).get("uid") == DATASOURCE_UID, f"{where} target {t.get('refId')}"
            assert t.get("expr", "").strip(), f"{where} target {t.get('refId')} has no expression"
        assert len({t["refId"] for t in targets}) == len(targets), f"{where}: duplicate refIds"
    for v in variables(d):
        if v.get("type") == "query":
            assert v["datasource"]["uid"] == DATASOURCE_UID, f"variable {v['name']}"


def test_datasource_provisioning_has_the_uid_the_dashboards_use():
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "cgman.yaml").read_text())
    (ds,) = doc["datasources"]
    assert ds["uid"] == DATASOURCE_UID and ds["type"] == "prometheus"
    assert ds["url"] == "http://localhost:9090"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "cgman.yaml").read_text())
    assert [p["type"] for p in prov["providers"]] == ["file"]


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_metric_a_query_names_is_served_by_the_exporter(path):
    known = contract_names()
    rules = recording_rules()
    bad = []
    for q in panel_queries(path) + variable_queries(path):
        for name in metric_names(q.expr):
            if name not in known and name not in rules:
                bad.append(f"{q.where()}: {name}")
    assert not bad, "metrics that cgman exporter does not serve:\n" + "\n".join(bad)


def test_recording_rules_use_only_exporter_metrics():
    known = contract_names()
    bad = {r: n for r, e in recording_rules().items() for n in metric_names(e) if n not in known}
    assert not bad, bad


def test_the_dashboards_show_every_metric_the_exporter_serves():
    from cgman.exporter.metrics import CONTAINER, RECORD, TENANT
    used = {path.name: set().union(*(metric_names(q.expr) for q in panel_queries(path) + variable_queries(path)))
            for path in FILES}
    rules = recording_rules()
    billing = set(used["tenant-billing.json"])
    billing |= {n for r in billing & rules.keys() for n in metric_names(rules[r])}
    missing = [m.name for m in CONTAINER + RECORD if m.name not in used["container-detail.json"]]
    missing += [m.name for m in TENANT if m.name not in billing]
    assert not missing, f"metrics no panel shows: {missing}"


def test_every_query_is_valid_promql(tmp_path):
    queries: list[tuple[str, str]] = []
    where: dict[str, str] = {}
    for path in FILES:
        vals = default_values(path)
        for i, q in enumerate(panel_queries(path) + variable_queries(path)):
            name = f"grafana:{path.stem.replace('-', '_')}:q{i}"
            expr = substitute(q.expr, vals)
            assert "$" not in expr, f"{q.where()}: not substituted: {expr}"
            queries.append((name, expr))
            where[name] = f"{q.where()}: {expr}"
    p = check_promql(queries, tmp_path)
    bad = [f"{where[n]}\n    {ln.strip()}" for ln in p.stdout.splitlines() + p.stderr.splitlines()
           for n in where if f'"{n}"' in ln]
    assert p.returncode == 0, "invalid PromQL:\n" + ("\n".join(bad) or p.stdout + p.stderr)


def test_substitute_handles_grafana_forms():
    vals = {"tenant": "(a|b)", "__rate_interval": "1m"}
    assert substitute('x{tenant=~"$tenant"}[$__rate_interval]', vals) == 'x{tenant=~"(a|b)"}[1m]'
    assert substitute('x{tenant=~"${tenant}"} y{t=~"${tenant:regex}"}', vals) == \
        'x{tenant=~"(a|b)"} y{t=~"(a|b)"}'
    with pytest.raises(KeyError):
        substitute("$nope", vals)


def test_promtool_rejects_bad_promql(tmp_path):
    """The PromQL check can fail: a broken expression is reported under its record name."""
    p = check_promql([("grafana:ok", "sum(up)"), ("grafana:broken", "sum(rate(up[5m]) by (")], tmp_path)
    assert p.returncode != 0
    assert '"grafana:broken"' in p.stdout + p.stderr


def test_shipped_rules_and_example_config_pass_promtool():
    p = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([promtool(), "check", "config", "prometheus.yml"], capture_output=True, text=True,
                       timeout=60, cwd=GRAFANA / "prometheus")
    assert p.returncode == 0, p.stdout + p.stderr


def test_price_variables_default_to_the_example_price_sheet():
    from cgman.accounting.prices import load_prices
    sheet = load_prices(REPO / "prices" / "example.yaml")
    vals = default_values(DASHBOARDS / "tenant-billing.json")
    for var, resource, per in (("price_cpu_hour", "cpu", "cpu-hour"), ("price_gib_hour", "memory", "GiB-hour"),
                               ("price_io_read_gib", "io_read", "GiB"), ("price_io_write_gib", "io_write", "GiB")):
        price = sheet.prices[resource]
        assert price.per == per, f"the dashboard prices {resource} per {per}, the sheet per {price.per}"
        assert Decimal(vals[var]) == price.price, f"${var} = {vals[var]}, prices/example.yaml says {price.price}"
    assert vals["currency"] == sheet.currency


def test_billing_dashboard_says_cgman_usage_is_the_bill_of_record():
    d = load(DASHBOARDS / "tenant-billing.json")
    assert "usage-mode cost" in d["description"] and "`cgman usage` is the bill of record" in d["description"]
