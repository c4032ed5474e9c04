"""Fixtures of the integration tests on a real broker: processor processes, a reader of the
output topics and a publisher to the events topic (defined in tests/support/processor.py)."""

from __future__ import annotations

from tests.support.processor import outputs, processors, publisher

__all__ = ["outputs", "processors", "publisher"]
