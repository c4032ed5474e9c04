"""The processor's consumer asks the broker to answer a fetch within
``SHAPING_PROCESSOR_FETCH_WAIT_MS``, not within faust's fixed 1.5 s.

Why it matters (bench/REPORT.md, (c)): aiokafka leaves a partition whose fetched records are
not consumed yet out of its next fetch request. Under load, when every events partition still
holds records as a request is built, the request names only quiet partitions (the commands
topic), and the broker holds it for the whole wait: a SessionEnded that arrives meanwhile
waits for it. With faust's 1.5 s, a rig then waited about 1.5 s for each assignment."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shaping.schemas.codec import default_codec
from shaping.services.adapters.settings import Settings
from shaping.services.curricula.catalog import default_catalog
from shaping.services.processor.app import build_app


def _broker_wait_ms(settings: Settings) -> int:
    """The fetch wait of the consumer the processor's worker would start (none connects)."""

    async def created() -> int:
        app = build_app(settings, default_codec(), default_catalog())
        thread = app.consumer._thread  # type: ignore[attr-defined]
        consumer = thread._create_worker_consumer(app.transport)
        return int(consumer._fetch_max_wait_ms)

    return asyncio.run(created())


def test_the_processor_consumer_waits_at_most_the_configured_fetch_wait(tmp_path: Path) -> None:
    assert _broker_wait_ms(Settings(data_dir=str(tmp_path))) == 20
    assert _broker_wait_ms(Settings(data_dir=str(tmp_path), processor_fetch_wait_ms=250)) == 250


def test_the_fetch_wait_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAPING_PROCESSOR_FETCH_WAIT_MS", "40")
    assert _broker_wait_ms(Settings(data_dir=str(tmp_path))) == 40
