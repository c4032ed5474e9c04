"""What the entry points build with :mod:`shaping.services.bootstrap`, made for tests: the
contract's codec, the shipped curricula, and projection stores and embedded runtimes on them.

Library code takes its codec and catalog as arguments (it has no defaults); a test that has no
reason to choose them takes these.
"""

from __future__ import annotations

from sqlalchemy import URL

from shaping.schemas.codec import EventCodec, default_codec
from shaping.schemas.topics import TopicNames
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import CurriculumCatalog
from shaping.services.embedded.log import InProcessLog
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.projector.store import ProjectionStore, SqlProjectionStore

CODEC: EventCodec = default_codec()
"""The contract's codec (the one :func:`shaping.services.bootstrap.codec` gives)."""


def sql_store(url: str | URL, *, echo: bool = False) -> SqlProjectionStore:
    """A projection store at ``url`` decoding with :data:`CODEC`."""
    return SqlProjectionStore(url, codec=CODEC, echo=echo)


def embedded_runtime(
    store: ProjectionStore | None = None,
    *,
    catalog: CurriculumCatalog | None = None,
    topics: TopicNames | None = None,
    log: InProcessLog | None = None,
) -> EmbeddedRuntime:
    """An embedded runtime with :data:`CODEC` and ``catalog`` (by default the curricula this
    machine loads, read now: a test may have set ``SHAPING_CURRICULA_DIR``)."""
    return EmbeddedRuntime(
        store,
        catalog=catalog if catalog is not None else default_catalog(),
        codec=CODEC,
        topics=topics,
        log=log,
    )
