"""Service settings, read from the environment so the local stack, docker-compose and tests
drive the services the same way."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from shaping.schemas.topics import TopicNames


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    """Where the services find Kafka and the database, and how topics are named.

    Every field has an environment variable (in brackets) and a default for a laptop.

    Attributes:
        bootstrap: Kafka bootstrap servers [SHAPING_BOOTSTRAP].
        topic_prefix: prefix of every topic name [SHAPING_TOPIC_PREFIX].
        partitions: partitions per topic [SHAPING_PARTITIONS].
        processor_id: faust application id, also its consumer group [SHAPING_PROCESSOR_ID].
        projector_id: the projector's name in its offsets table [SHAPING_PROJECTOR_ID].
        db_url: SQLAlchemy URL of the status tables [SHAPING_DB_URL].
        data_dir: working directory for local state [SHAPING_DATA_DIR].
        clock_max_ahead_s: how far (seconds) an event may be dated ahead of the broker's time
            of its message before the processor refuses it [SHAPING_CLOCK_MAX_AHEAD_S].
        clock_max_behind_days: how far (days) before it [SHAPING_CLOCK_MAX_BEHIND_DAYS]; a
            rig that was offline drains its outbox late, so this is wide.
    """

    bootstrap: str = field(default_factory=lambda: _env("SHAPING_BOOTSTRAP", "127.0.0.1:9092"))
    topic_prefix: str = field(default_factory=lambda: _env("SHAPING_TOPIC_PREFIX", "shaping"))
    partitions: int = field(default_factory=lambda: int(_env("SHAPING_PARTITIONS", "4")))
    processor_id: str = field(
        default_factory=lambda: _env("SHAPING_PROCESSOR_ID", "shaping-processor")
    )
    projector_id: str = field(default_factory=lambda: _env("SHAPING_PROJECTOR_ID", "projector"))
    db_url: str = field(default_factory=lambda: _env("SHAPING_DB_URL", "sqlite:///shaping.sqlite"))
    data_dir: str = field(default_factory=lambda: _env("SHAPING_DATA_DIR", ".shaping"))
    clock_max_ahead_s: float = field(
        default_factory=lambda: float(_env("SHAPING_CLOCK_MAX_AHEAD_S", "900"))
    )
    clock_max_behind_days: float = field(
        default_factory=lambda: float(_env("SHAPING_CLOCK_MAX_BEHIND_DAYS", "366"))
    )

    @property
    def topics(self) -> TopicNames:
        """The topic names under this prefix."""
        return TopicNames.with_prefix(self.topic_prefix)
