"""docker-compose.yml cannot run here (no Docker engine), so its structure is checked: every
service the deployment needs, health checks and restart policies, files it mounts and reads,
and the same settings as the local stack (infra/shaping.env, infra/stack.sh)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.ops import STACK_SH, run
from tests.support.scripts import REPO

COMPOSE = REPO / "docker-compose.yml"
ONE_SHOT = {"topics", "rigs"}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def env_file() -> dict[str, str]:
    values = {}
    for line in (REPO / "infra" / "shaping.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_compose_runs_the_whole_stack() -> None:
    services = compose()["services"]
    assert set(services) >= {
        "kafka",
        "postgres",
        "topics",
        "processor",
        "projector",
        "ingress",
        "alerts",
        "notifier",
        "web",
        "prometheus",
        "grafana",
        "rigs",
    }
    assert services["rigs"]["profiles"] == ["sim"]
    assert services["notifier"]["profiles"] == ["notify"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_long_running_services_have_health_checks_and_restart_policies() -> None:
    for name, service in compose()["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        assert service.get("restart") == "unless-stopped", name
        check = service.get("healthcheck")
        assert check and check["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_dependencies_name_existing_services_with_valid_conditions() -> None:
    services = compose()["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            assert spec["condition"] in conditions
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], (name, dependency)


def test_every_env_file_and_mounted_path_exists() -> None:
    document = compose()
    named_volumes = set(document.get("volumes") or {})
    for name, service in document["services"].items():
        files = service.get("env_file") or []
        for path in [files] if isinstance(files, str) else files:
            assert (REPO / path).is_file(), (name, path)
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), (name, source)
            else:
                assert source in named_volumes, (name, source)


# Where each stateful service keeps its data. Each is read from the service's own settings in
# docker-compose.yml (never left to an image default, which can change between image versions:
# apache/kafka's default log.dirs is /tmp/kraft-combined-logs, lost with the container).
STATELESS = {"topics", "projector", "ingress", "alerts", "notifier", "rigs"}


def _dockerfile_env(name: str) -> str | None:
    for line in (REPO / "Dockerfile").read_text().splitlines():
        match = re.match(rf"ENV\s+{name}=(\S+)", line.strip())
        if match:
            return match.group(1)
    return None


def data_dirs(services: dict[str, Any]) -> dict[str, list[str]]:
    kafka = services["kafka"].get("environment") or {}
    postgres = services["postgres"].get("environment") or {}
    grafana = services["grafana"].get("environment") or {}
    processor = services["processor"].get("environment") or {}
    web = services["web"].get("environment") or {}
    tsdb = [
        arg.split("=", 1)[1]
        for arg in services["prometheus"].get("command") or []
        if arg.startswith("--storage.tsdb.path=")
    ]
    dirs = {
        "kafka": str(kafka.get("KAFKA_LOG_DIRS", "")).split(","),
        "postgres": [postgres.get("PGDATA", "")],
        "prometheus": tsdb or [""],
        "grafana": [grafana.get("GF_PATHS_DATA", "")],
        "processor": [processor.get("SHAPING_DATA_DIR") or _dockerfile_env("SHAPING_DATA_DIR")],
        "web": [
            str(Path(web.get("SHAPING_WEB_USERS", "")).parent),
            str(Path(web.get("SHAPING_WEB_SECRET", "")).parent),
        ],
    }
    if "KAFKA_METADATA_LOG_DIR" in kafka:
        dirs["kafka"].append(kafka["KAFKA_METADATA_LOG_DIR"])
    return {name: [str(d or "") for d in found] for name, found in dirs.items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume, in the short or the long syntax."""
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = str(volume.get("source", "")), str(volume["target"])
            found.append((source, target, bool(volume.get("read_only"))))
        else:
            parts = volume.split(":")
            found.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return found


def test_every_service_is_known_as_stateful_or_stateless() -> None:
    services = compose()["services"]
    assert set(services) == set(data_dirs(services)) | STATELESS


def test_every_stateful_service_keeps_its_data_on_a_named_volume() -> None:
    document = compose()
    services = document["services"]
    named = set(document.get("volumes") or {})
    for name, dirs in data_dirs(services).items():
        for path in dirs:
            assert path.startswith("/"), f"{name}: its data directory is not set explicitly"
            assert not path.startswith("/tmp"), f"{name}: data in {path} is lost on restart"
            holders = [
                (source, target, read_only)
                for source, target, read_only in mounts(services[name])
                if path == target or path.startswith(target.rstrip("/") + "/")
            ]
            # The innermost mount holds the data (Grafana mounts dashboards inside its data).
            assert holders, f"{name}: {path} is on no volume"
            source, _, read_only = max(holders, key=lambda mount: len(mount[1]))
            assert source in named, f"{name}: {path} is on {source!r}, not a named volume"
            assert not read_only, f"{name}: {path} is mounted read-only"


def test_kafka_keeps_its_log_in_the_volume_the_image_declares() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert ("kafka-data", "/var/lib/kafka/data", False) in mounts(kafka)


def test_the_dockerfile_copies_what_exists() -> None:
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), line


def test_prometheus_scrapes_the_metrics_ports_of_the_shared_settings(
    prometheus_installed: None,
) -> None:
    settings = env_file()
    config = yaml.safe_load((REPO / "infra/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0]
        for job in config["scrape_configs"]
        if "static_configs" in job
    }
    assert targets == {
        "processor": f"processor:{settings['SHAPING_PROCESSOR_METRICS_PORT']}",
        "projector": f"projector:{settings['SHAPING_PROJECTOR_METRICS_PORT']}",
        "ingress": f"ingress:{settings['SHAPING_INGRESS_METRICS_PORT']}",
        "alerts": f"alerts:{settings['SHAPING_ALERTS_METRICS_PORT']}",
        "notifier": f"notifier:{settings['SHAPING_NOTIFIER_METRICS_PORT']}",
        "web": f"web:{settings['SHAPING_WEB_METRICS_PORT']}",
    }
    # The rigs (machines of the lab) come from the file_sd files of the mounted rigs folder.
    [rigs] = [job for job in config["scrape_configs"] if job["job_name"] == "rigs"]
    assert rigs["file_sd_configs"][0]["files"] == ["/etc/prometheus/rigs/*.yml"]
    volumes = compose()["services"]["prometheus"]["volumes"]
    assert "./infra/prometheus/rigs:/etc/prometheus/rigs:ro" in volumes
    assert yaml.safe_load((REPO / "infra/prometheus/rigs/rigs.yml").read_text()) == []
    result = subprocess.run(
        ["promtool", "check", "config", str(REPO / "infra/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_gets_the_provisioning_and_dashboards_it_is_told_about() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./infra/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (REPO / "infra/grafana/provisioning/dashboards/shaping.yml").read_text()
    )
    assert mounts["./infra/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    datasources = (REPO / "infra/grafana/provisioning/datasources/shaping.yml").read_text()
    for variable in re.findall(r"\$\{(\w+)\}", datasources):
        assert variable in grafana["environment"], variable
    prometheus = yaml.safe_load(datasources)["datasources"][0]
    assert prometheus["url"] == "http://prometheus:9090"


def test_compose_and_the_local_stack_read_the_same_settings(tmp_path: Path) -> None:
    settings = env_file()
    services = compose()["services"]
    for name in ("processor", "projector", "topics", "rigs"):
        assert services[name]["env_file"] == "infra/shaping.env"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHAPING_")}
    clean["SHAPING_STACK_DIR"] = str(tmp_path)
    effective = dict(
        line.split("=", 1) for line in run(["bash", str(STACK_SH), "config"], clean).splitlines()
    )
    for key, value in settings.items():
        assert effective[key] == value, key
    assert effective["SHAPING_BOOTSTRAP"] == f"127.0.0.1:{settings['SHAPING_KAFKA_PORT']}"
    # the environment wins over the file, as with compose's `environment:`
    clean["SHAPING_KAFKA_PORT"] = "19092"
    overridden = run(["bash", str(STACK_SH), "config"], clean)
    assert "SHAPING_BOOTSTRAP=127.0.0.1:19092" in overridden.splitlines()


def test_the_example_routing_file_checks_and_its_copy_is_ignored() -> None:
    """The notifier's example routing file passes the same check a lab's copy must, and git
    ignores the copy (it names people)."""
    from shaping.services.notifier.routing import load_routing

    routing = load_routing(REPO / "infra/alerts/routing.example.yaml")
    assert set(routing.people) == {"keeper", "trainer", "manager"}
    assert routing.smtp is not None and routing.subscriptions
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "infra/alerts/routing.yaml"], cwd=REPO, check=False
    )
    assert ignored.returncode == 0
