"""Shared plumbing for starting real infrastructure from the test suite."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Seconds a start script may take. Generous: the very first Kafka start on a
# fresh machine downloads the broker jars with Maven.
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 90.0


class InfraStartError(RuntimeError):
    """A start script failed; the message carries its output."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def env_port(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def make_temp_dir(prefix: str) -> Path:
    """A fresh directory under the system temp dir that other users may traverse.

    ``tempfile.mkdtemp`` creates mode 0700; PostgreSQL's server runs as the
    ``postgres`` user when the suite runs as root and must reach its data dir.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def keep_data() -> bool:
    return os.environ.get("SHAPING_TEST_KEEP_DATA", "") not in ("", "0")


def remove_dir(path: Path) -> None:
    if not keep_data():
        shutil.rmtree(path, ignore_errors=True)


def run_script(
    script: Path, command: str, env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run ``bash script command`` with ``env`` added to our environment."""
    full_env = dict(os.environ)
    full_env.update(env)
    full_env.setdefault("PYTHON", sys.executable)
    return subprocess.run(
        ["bash", str(script), command],
        env=full_env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def describe_failure(what: str, result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{what} failed (exit {result.returncode}): {' '.join(map(str, result.args))}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
