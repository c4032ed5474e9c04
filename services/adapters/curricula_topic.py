"""Published curriculum versions on Kafka: the compacted ``<prefix>.curricula`` topic.

``shaping curriculum publish`` writes a version's CurriculumPublished (full content and content
hash) to this topic, keyed by ``name@version``, and waits until the broker has it. Versions are
immutable, so compaction only ever drops a repeat of the same version, and the topic keeps every
version forever: it is the record of what was published.

The processor reads the whole topic before it processes any event (:meth:`CurriculaFollower.load`),
so a restarted processor knows every published version, including those its mice's state names.
Then a thread follows the topic and hands new versions to the catalog. An event that names a
version the catalog does not know makes the catalog read the topic to its end first
(:class:`FollowingCatalog`): whoever sent that event saw the version acknowledged before, so a
version published before an event refers to it is always found, however far behind the thread
is. Publications therefore need no order relative to the events topic.

A record that is not a valid publication (undecodable, a hash that does not match the content,
content that does not compile, a key that is not its ``name@version``), or a version already
known with other content, is left out of the catalog and listed in
:attr:`CurriculaFollower.problems` (and logged); it never stops the processor.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shaping.schemas.codec import EventCodec
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import CurriculumPublished
from shaping.schemas.headers import headers_for
from shaping.services.curricula.catalog import compile_content
from shaping.services.curricula.errors import PublishError
from shaping.services.domain.curriculum import CurriculumCatalog, CurriculumEngine
from shaping.services.domain.errors import CurriculumError

if TYPE_CHECKING:
    from shaping.services.adapters.kafka import KafkaConnection

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 60.0
"""Longest wait for the topic to be read to its end (at start, or on a miss)."""

CONNECT_TIMEOUT_S = 5.0
"""How long the command line waits for a broker (and the topic) before giving up."""

SEND_TIMEOUT_S = 30.0
"""Longest wait for the broker to acknowledge a publication."""


def version_key(name: str, version: str) -> bytes:
    """Kafka key of a published version: ``name@version`` in UTF-8."""
    return f"{name}@{version}".encode()


def content_digest(content: str) -> str:
    """``sha256:<hex>`` of a publication's content, as in its ``content_hash``."""
    return "sha256:" + hashlib.sha256(content.encode("utf-8")).hexdigest()


def verify(event: CurriculumPublished) -> CurriculumEngine:
    """Compiles a publication after checking its hash, its content and its name and version.

    Raises:
        CurriculumError: saying what is wrong with it.
    """
    if content_digest(event.content) != event.content_hash:
        raise CurriculumError(
            f"published content does not match its content_hash ({event.content_hash})"
        )
    engine = compile_content(event.content)
    if (engine.name, engine.version) != (event.curriculum_name, event.curriculum_version):
        raise CurriculumError(
            f"content is {engine.name} {engine.version}, not {event.curriculum_name} "
            f"{event.curriculum_version}"
        )
    return engine


@dataclass(frozen=True)
class PublishedRecord:
    """One record of the curricula topic: the publication, or why it is not one."""

    partition: int
    offset: int
    key: bytes | None
    event: CurriculumPublished | None
    error: str | None = None

    @property
    def where(self) -> str:
        """``partition@offset``, for messages."""
        return f"{self.partition}@{self.offset}"


class CurriculaLog:
    """Reads the curricula topic from its beginning with kafka-python (no consumer group).

    Not thread-safe; :class:`CurriculaFollower` guards it with a lock.

    Args:
        connection: the brokers (a :class:`KafkaConnection`, or just their addresses).
        topic: the curricula topic (``TopicNames.curricula``).
        codec: decodes the records.
        timeout_s: how long to wait for a broker, then for the topic's partitions.

    Raises:
        PublishError: when no broker answers or the topic does not exist.
    """

    def __init__(
        self,
        connection: KafkaConnection | str,
        topic: str,
        codec: EventCodec,
        timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        from kafka.errors import KafkaError

        from shaping.services.adapters.errors import TopicMissingError
        from shaping.services.adapters.kafka import consumer as kafka_consumer
        from shaping.services.adapters.topics import wait_for_partitions

        self.topic = topic
        self.codec = codec
        try:
            self.consumer = kafka_consumer(
                connection,
                "shaping-curricula",
                bootstrap_timeout_ms=int(timeout_s * 1000),
            )
        except KafkaError as exc:
            raise PublishError(f"no Kafka broker answered at {_where(connection)}: {exc}") from exc
        try:
            self.partitions = wait_for_partitions(self.consumer, [topic], timeout_s) or []
        except TopicMissingError as exc:
            self.consumer.close()
            raise PublishError(str(exc)) from exc
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)

    def read_to_end(self, timeout_s: float = READ_TIMEOUT_S) -> list[PublishedRecord]:
        """Every record from where the last call stopped up to the topic's end as of now.

        Raises:
            PublishError: when the end is not reached within ``timeout_s``.
        """
        ends = self.consumer.end_offsets(self.partitions)
        deadline = time.monotonic() + timeout_s
        found: list[PublishedRecord] = []
        while any(self.consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise PublishError(
                    f"could not read {self.topic!r} to its end within {timeout_s:g} s"
                )
            batches = self.consumer.poll(timeout_ms=200)
            for batch in batches.values():
                found.extend(self._record(message) for message in batch)
        return sorted(found, key=lambda r: (r.partition, r.offset))

    def _record(self, message: Any) -> PublishedRecord:
        record = PublishedRecord(message.partition, message.offset, message.key, None)
        try:
            event = self.codec.decode(message.value)
        except SerializationError as exc:
            return _failed(record, f"does not decode: {exc}")
        if not isinstance(event, CurriculumPublished):
            return _failed(record, f"is a {event.event_type}, not a CurriculumPublished")
        key = version_key(event.curriculum_name, event.curriculum_version)
        if message.key != key:
            return _failed(record, f"key {message.key!r} is not {key!r}")
        return PublishedRecord(record.partition, record.offset, record.key, event)

    def close(self) -> None:
        """Closes the consumer."""
        self.consumer.close()


def _failed(record: PublishedRecord, error: str) -> PublishedRecord:
    return PublishedRecord(record.partition, record.offset, record.key, None, error)


def _where(connection: KafkaConnection | str) -> str:
    return connection if isinstance(connection, str) else connection.bootstrap


@contextmanager
def _log(
    connection: KafkaConnection | str, topic: str, codec: EventCodec, timeout_s: float
) -> Iterator[CurriculaLog]:
    reader = CurriculaLog(connection, topic, codec, timeout_s)
    try:
        yield reader
    finally:
        reader.close()


def read_published(
    connection: KafkaConnection | str,
    topic: str,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    *,
    codec: EventCodec,
) -> list[CurriculumPublished]:
    """Every well-formed publication on the curricula topic (not yet compiled), in topic
    order per partition.

    Args:
        connection: the brokers (a :class:`KafkaConnection`, or just their addresses).
        topic: the curricula topic.
        connect_timeout_s: how long to wait for a broker and for the topic.
        codec: decodes the records (:func:`shaping.services.bootstrap.codec`).

    Raises:
        PublishError: when Kafka cannot be reached or the topic does not exist.
    """
    with _log(connection, topic, codec, connect_timeout_s) as reader:
        return [r.event for r in reader.read_to_end() if r.event is not None]


def add_published(catalog: CurriculumCatalog, events: Sequence[CurriculumPublished]) -> list[str]:
    """Adds the versions published on the topic to a catalog (for the command line).

    Returns:
        A message for every publication left out (invalid, or a version known with other
        content); the first version known wins.
    """
    problems = []
    for event in events:
        try:
            engine = verify(event)
        except CurriculumError as exc:
            problems.append(f"{event.curriculum_name}@{event.curriculum_version}: {exc}")
            continue
        problem = _conflict(catalog, engine)
        if problem is not None:
            problems.append(problem)
        elif not catalog.has(engine.name, engine.version):
            catalog.add(engine)
    return problems


def _conflict(catalog: CurriculumCatalog, engine: CurriculumEngine) -> str | None:
    """Why ``engine`` cannot join the catalog (None: it can, or it is already there)."""
    # The base class's lookups: a FollowingCatalog's own would read the topic again.
    if not CurriculumCatalog.has(catalog, engine.name, engine.version):
        return None
    known = getattr(
        CurriculumCatalog.get(catalog, engine.name, engine.version), "content_hash", None
    )
    new = getattr(engine, "content_hash", None)
    if known is not None and new is not None and known != new:
        return (
            f"{engine.name} {engine.version} is already known with other content ({known}); "
            f"the published one ({new}) is left out"
        )
    return None


def publish_version(
    connection: KafkaConnection | str, topic: str, event: CurriculumPublished, codec: EventCodec
) -> bool:
    """Writes a publication to the curricula topic and waits until the broker has it.

    A version is written once: if the topic already holds it with the same content, nothing is
    sent; with other content, it is refused (compaction would otherwise replace the version
    mice may already be on).

    Args:
        connection: the brokers (a :class:`KafkaConnection`, or just their addresses).
        topic: the curricula topic.
        event: the publication.
        codec: encodes it (and decodes what the topic holds).

    Returns:
        True when the record was written, False when the version was already published.

    Raises:
        PublishError: when the version is on the topic with other content, Kafka cannot be
            reached, or the write fails.
    """
    from kafka.errors import KafkaError

    from shaping.services.adapters.kafka import producer as kafka_producer

    for known in read_published(connection, topic, codec=codec):
        if (known.curriculum_name, known.curriculum_version) != (
            event.curriculum_name,
            event.curriculum_version,
        ):
            continue
        if known.content_hash == event.content_hash:
            return False
        raise PublishError(
            f"{event.curriculum_name} {event.curriculum_version} is already published with "
            f"other content ({known.content_hash}); publish a new version instead"
        )
    try:
        producer = kafka_producer(
            connection,
            "shaping-curriculum-publish",
            max_block_ms=int(SEND_TIMEOUT_S * 1000),
        )
    except KafkaError as exc:
        raise PublishError(f"no Kafka broker answered at {_where(connection)}: {exc}") from exc
    try:
        value = codec.encode(event)
        producer.send(
            topic,
            key=version_key(event.curriculum_name, event.curriculum_version),
            value=value,
            headers=headers_for(value),
        ).get(timeout=SEND_TIMEOUT_S)
    except KafkaError as exc:
        raise PublishError(f"could not write to {topic!r}: {exc}") from exc
    finally:
        producer.close(timeout=SEND_TIMEOUT_S)
    return True


class FollowingCatalog(CurriculumCatalog):
    """A catalog that takes in versions found by a follower, and remembers its misses.

    Versions offered from another thread (:meth:`offer`) join the catalog in the thread that
    uses it, on its next lookup, so the catalog is only ever changed by its user. A lookup never
    does I/O: when it names a version the catalog lacks, it fails as any catalog's would and
    the version is remembered (:meth:`take_missed`), so the processor can read the curricula
    topic off its event loop (:meth:`CurriculaFollower.catch_up` in an executor) and process
    the message again.
    """

    def __init__(
        self,
        curricula: Sequence[CurriculumEngine] = (),
        compiler: Callable[[str], CurriculumEngine] | None = None,
    ) -> None:
        self._inbox: deque[CurriculumEngine] = deque()
        self._missed: set[tuple[str, str]] = set()
        self.rejected: list[str] = []
        super().__init__(curricula, compiler)

    @classmethod
    def copy_of(cls, catalog: CurriculumCatalog) -> FollowingCatalog:
        """A following catalog with the versions and compiler of ``catalog``."""
        return cls(list(catalog), catalog.compiler)

    def offer(self, engine: CurriculumEngine) -> None:
        """Hands over a published version (thread-safe); it joins on the next lookup."""
        self._inbox.append(engine)

    def take_offered(self) -> None:
        """Adds the versions offered so far (call from the thread that uses the catalog)."""
        while self._inbox:
            engine = self._inbox.popleft()
            problem = _conflict(self, engine)
            if problem is not None:
                self.rejected.append(problem)
                log.error("curricula topic: %s", problem)
            elif not super().has(engine.name, engine.version):
                super().add(engine)

    def _ensure(self, name: str, version: str) -> None:
        self.take_offered()
        if not super().has(name, version):
            self._missed.add((name, version))

    def take_missed(self) -> set[tuple[str, str]]:
        """The ``(name, version)`` lookups that missed since the last call, forgotten (called
        after every message: nothing is allocated when nothing missed)."""
        if not self._missed:
            return self._missed
        missed, self._missed = self._missed, set()
        return missed

    def has(self, name: str, version: str) -> bool:
        """Whether this version is known (a miss is remembered)."""
        self._ensure(name, version)
        return super().has(name, version)

    def get(self, name: str, version: str | None = None) -> CurriculumEngine:
        """A version of a curriculum (the newest known when ``version`` is None); an unknown
        version is remembered as a miss (:meth:`take_missed`).

        Raises:
            CurriculumError: when the curriculum or version is unknown.
        """
        if version is None:
            self.take_offered()
        else:
            self._ensure(name, version)
        return super().get(name, version)

    def versions(self, name: str) -> list[str]:
        """Known versions of a curriculum, oldest first."""
        self.take_offered()
        return super().versions(name)

    def names(self) -> list[str]:
        """Known curriculum names."""
        self.take_offered()
        return super().names()


class CurriculaFollower:
    """Keeps a :class:`FollowingCatalog` up to date with the curricula topic.

    Args:
        connection: the brokers (a :class:`KafkaConnection`, or just their addresses).
        topic: the curricula topic.
        catalog: the catalog to feed.
        poll_s: how long the following thread waits for new records per round.
        codec: decodes the records (:func:`shaping.services.bootstrap.codec`;
            :func:`shaping.services.bootstrap.following_catalog` builds both).
    """

    def __init__(
        self,
        connection: KafkaConnection | str,
        topic: str,
        catalog: FollowingCatalog,
        poll_s: float = 0.5,
        *,
        codec: EventCodec,
    ) -> None:
        self.catalog = catalog
        self.poll_s = poll_s
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = CurriculaLog(connection, topic, codec)

    def load(self, timeout_s: float = READ_TIMEOUT_S) -> int:
        """Reads the topic to its end and adds every published version; returns how many
        records were read. Call before processing any event.

        Raises:
            PublishError: when the end is not reached within ``timeout_s``.
        """
        with self._lock:
            records = self._log.read_to_end(timeout_s)
            self._take(records)
        self.catalog.take_offered()
        return len(records)

    def catch_up(self) -> None:
        """Reads the topic to its current end (a lookup missed); failures are logged.

        Blocking (up to the read timeout): the processor runs it in an executor, never on its
        event loop. Reading and handing over happen under one lock, so once this returns,
        every record the thread had read before is in the catalog's inbox too.
        """
        try:
            with self._lock:
                self._take(self._log.read_to_end())
        except PublishError as exc:
            log.error("curricula topic: %s", exc)

    def _take(self, records: Sequence[PublishedRecord]) -> None:
        """Checks and compiles records and offers their versions (hold the lock)."""
        for record in records:
            if record.event is None:
                self._problem(f"record {record.where} {record.error}")
                continue
            try:
                engine = verify(record.event)
            except CurriculumError as exc:
                self._problem(f"record {record.where} is left out: {exc}")
                continue
            self.catalog.offer(engine)

    def _problem(self, message: str) -> None:
        self.problems.append(message)
        log.error("curricula topic: %s", message)

    def start(self) -> None:
        """Follows the topic in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._follow, name="curricula", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._take(self._log.read_to_end())
            except Exception as exc:  # the thread must outlive a broker hiccup
                log.warning("curricula topic: %s", exc)
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        """Stops the thread and closes the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=READ_TIMEOUT_S)
        with self._lock:
            self._log.close()
