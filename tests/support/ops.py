"""Helpers for the operations tests (tests/ops): free ports, Prometheus, promtool, the
dashboards' queries, running the infra scripts."""

from __future__ import annotations

import json
import random
import re
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.scripts import REPO

PROMETHEUS_SH = REPO / "infra" / "prometheus" / "prometheus.sh"
STACK_SH = REPO / "infra" / "stack.sh"
GRAFANA = REPO / "infra" / "grafana"

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_KEYWORDS |= {"and", "or", "unless", "offset", "inf", "nan"}

PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
"""Series Prometheus itself records for every target (not in any /metrics output)."""


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000
"""free_ports picks from here up, below ports that usually serve something."""


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out for bind(0) and outgoing connections (Linux's default
    where it cannot be read)."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free on 127.0.0.1 right now, outside the kernel's
    ephemeral range, so that no port 0 bind or outgoing connection can take one before the
    service the test starts binds it."""
    low, high = ephemeral_range()
    candidates = [p for p in range(LOWEST_PORT, 65536) if not low <= p <= high]
    random.shuffle(candidates)
    ports: list[int] = []
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"fewer than {n} free ports on 127.0.0.1 outside {low}-{high}")


def free_port() -> int:
    """One port of :func:`free_ports`."""
    return free_ports(1)[0]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return bytes(response.read())


def scrape(port: int) -> str:
    """The text of a service's /metrics endpoint."""
    return http_get(f"http://127.0.0.1:{port}/metrics").decode()


def scraped_names(text: str) -> set[str]:
    """Every series name in a Prometheus text exposition."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )


def prom_query(base_url: str, expr: str) -> list[dict[str, Any]]:
    """Evaluates ``expr`` (instant query) in Prometheus; raises on a query error."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(http_get(url))
    except urllib.error.HTTPError as exc:  # 400 for a bad expression
        raise AssertionError(f"{expr!r}: {exc.read().decode()}") from exc
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def prom_value(base_url: str, expr: str) -> float | None:
    """The single value of a scalar-like query, None when it has no result."""
    result = prom_query(base_url, expr)
    return float(result[0]["value"][1]) if result else None


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, keywords or label names)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def expand_grafana_sql(query: str, mouse: str = "M001") -> str:
    """Expands the Grafana macros and variables the dashboards use, as Grafana does for
    PostgreSQL, over a time range wide enough for any test data."""
    query = re.sub(
        r"\$__timeFilter\((\w+)\)",
        r"\1 BETWEEN '1970-01-01T00:00:00Z' AND '2200-01-01T00:00:00Z'",
        query,
    )
    query = re.sub(
        r"\$__timeGroupAlias\((\w+),\s*'1h'\)",
        r'floor(extract(epoch from \1)/3600)*3600 AS "time"',
        query,
    )
    query = query.replace("${mouse}", mouse).replace("$mouse", mouse)
    assert "$" not in query, f"unexpanded Grafana macro or variable in {query!r}"
    return query


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text())
        for path in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


def targets(kind: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(dashboard file, panel title, target) of every ``prometheus`` or ``postgres`` target."""
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel["targets"]:
                ds_type = target["datasource"]["type"]
                if (kind == "prometheus") == (ds_type == "prometheus"):
                    yield name, panel["title"], target


def dashboard_promql() -> list[str]:
    return [target["expr"] for _, _, target in targets("prometheus")]


def dashboard_sql() -> list[str]:
    queries = [target["rawSql"] for _, _, target in targets("postgres")]
    for board in dashboards().values():
        for variable in board["templating"]["list"]:
            if variable["datasource"]["type"] != "prometheus":
                queries.append(variable["query"])
    return queries


def run(args: list[str], env: dict[str, str], timeout_s: float = 600) -> str:
    """Runs a script; fails the test with its output if it exits non-zero."""
    result = subprocess.run(
        args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def read_pid(path: Path) -> int | None:
    if not path.is_file():
        return None
    digits = "".join(ch for ch in path.read_text().splitlines()[0] if ch.isdigit())
    return int(digits) if digits else None
