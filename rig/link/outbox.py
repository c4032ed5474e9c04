"""The rig's Kafka transport: the durable outbox, its drainer and the assignment follower.

:class:`OutboxTransport` is the :class:`~shaping.rig.link.transport.RigTransport` a rig on a Pi
uses. ``publish`` stores each event in the outbox of the rig's
:class:`~shaping.rig.link.store.RigStore` (on disk before it returns) and wakes a background
thread, the :class:`~shaping.rig.link.drain.OutboxDrainer`, that sends the outbox to Kafka in
order; ``latest_assignment`` reads the assignments and decisions topics into the store's cache
with the :class:`~shaping.rig.link.follow.AssignmentFollower` and answers from that cache, so
the rig works on with what it received last when the broker is unreachable.

Beyond the port, the agent asks it whether it reached the broker (:attr:`offline`,
:meth:`problem`), has it read what arrived (:meth:`poll`), and reads what the processor decided
from :attr:`store`. The Kafka clients live for one run: :meth:`connect` opens them (or does
not, offline) and closes them at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

from shaping.rig.errors import BrokerUnreachableError
from shaping.rig.faults import FaultPlan
from shaping.rig.link.connection import KafkaLink
from shaping.rig.link.drain import OutboxDrainer
from shaping.rig.link.follow import AssignmentFollower
from shaping.rig.link.store import RigStore
from shaping.schemas.codec import EventCodec
from shaping.schemas.events import AssignmentIssued, Event
from shaping.schemas.topics import TopicNames


class OutboxTransport:
    """A rig's link to Kafka through its outbox (see the module's doc).

    Args:
        store: the rig's store: the outbox, the assignment cache, the journal.
        bootstrap: how to reach Kafka (:attr:`RigConfig.link <shaping.rig.config.RigConfig.link>`),
            or just the bootstrap servers of a plaintext broker.
        topics: the topic names (events go to ``topics.events``, or to the rig's ingress
            topic when the link says so: :meth:`KafkaLink.events_topic
            <shaping.rig.link.connection.KafkaLink.events_topic>`).
        mice: the mice whose assignments and decisions are followed.
        client_id: the rig's name in broker logs.
        codec: the codec the rig reads Kafka with (tests give an older release's subset).
        faults: crash tests only: handed to the drainer (kill after the N-th acknowledgement).
    """

    def __init__(
        self,
        store: RigStore,
        bootstrap: KafkaLink | str,
        topics: TopicNames,
        mice: tuple[str, ...],
        client_id: str,
        codec: EventCodec,
        faults: FaultPlan | None = None,
    ) -> None:
        self.store = store
        self.link = KafkaLink.of(bootstrap)
        self.bootstrap = self.link.bootstrap
        self.topics = topics
        self.events_topic = self.link.events_topic(topics)
        self.mice = mice
        self.client_id = client_id
        self.codec = codec
        self.faults = faults if faults is not None else FaultPlan.none()
        self.offline = True
        self.follower: AssignmentFollower | None = None
        self.drainer: OutboxDrainer | None = None
        self._problem: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the port -------------------------------------------------------------------------------

    def publish(self, events: Sequence[Event]) -> None:
        """Stores the events in the outbox, in order (on disk when this returns), and wakes the
        drainer, which sends them to Kafka (an event id stored before is not stored again)."""
        for event in events:
            self.store.append(event, self.events_topic)
        self._wake.set()

    def latest_assignment(
        self, mouse_id: str, min_session_number: int = 1, timeout_s: float = 0.0
    ) -> AssignmentIssued | None:
        """The mouse's cached assignment, reading the topics up to ``timeout_s`` for one whose
        session number is at least ``min_session_number`` (offline: the cache as it is)."""
        deadline = time.monotonic() + timeout_s
        while True:
            cached = self.store.cached_assignment(mouse_id)
            if cached is not None and cached.assignment.session_number >= min_session_number:
                return cached.assignment
            if self.follower is None or time.monotonic() >= deadline:
                return cached.assignment if cached is not None else None
            with suppress(BrokerUnreachableError):
                self.poll(min(0.3, max(0.0, deadline - time.monotonic())))

    # -- one run --------------------------------------------------------------------------------

    @contextmanager
    def connect(
        self, offline: bool, catch_up_timeout_s: float, say: Callable[[str], None]
    ) -> Iterator[OutboxTransport]:
        """Opens the link for one run and closes it after: reads the topics up to their end
        (bounded by ``catch_up_timeout_s``) and starts the drainer thread. ``offline`` contacts
        no broker; an unreachable broker is said (``say``) and the run goes on offline."""
        self._open(offline, catch_up_timeout_s, say)
        try:
            yield self
        finally:
            self._close()

    def _open(self, offline: bool, catch_up_timeout_s: float, say: Callable[[str], None]) -> None:
        self.offline = True
        self._problem = "offline mode" if offline else None
        self._stop.clear()
        if offline:
            say("offline mode: the broker is not contacted")
            return
        self.follower = AssignmentFollower(
            self.store,
            self.link,
            self.topics.assignments,
            self.topics.decisions,
            self.mice,
            client_id=self.client_id,
            codec=self.codec,
        )
        self.drainer = OutboxDrainer(
            self.store,
            self.link,
            client_id=self.client_id,
            codec=self.codec,
            faults=self.faults,
        )
        try:
            self.follower.catch_up(timeout_s=catch_up_timeout_s)
            self.offline = False
        except BrokerUnreachableError as exc:
            self._problem = str(exc)
            say(f"broker {self.bootstrap} unreachable ({exc}); working offline")
        self._thread = threading.Thread(
            target=self.drainer.run, args=(self._stop, self._wake), daemon=True
        )
        self._thread.start()

    def _close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self.drainer is not None:
            self.drainer.close()
        if self.follower is not None:
            self.follower.close()

    def wake(self) -> None:
        """Tells the drainer to send now."""
        self._wake.set()

    def poll(self, timeout_s: float) -> None:
        """Reads what arrived on the assignments and decisions topics into the store (offline:
        waits ``timeout_s``).

        Raises:
            BrokerUnreachableError: the broker did not answer (after a short pause).
        """
        if self.follower is None:
            time.sleep(timeout_s)
            return
        try:
            self.follower.poll(timeout_s)
            self.offline = False
        except BrokerUnreachableError as exc:
            self._problem = str(exc)
            time.sleep(min(timeout_s, 0.5))
            raise

    def problem(self) -> str | None:
        """Why the rig is not in touch with the broker (None: as far as it knows, it is)."""
        if self.drainer is not None and self.store.unsent_count():
            return self.drainer.status.last_error or self._problem
        return self._problem

    def reconnected(self) -> bool:
        """Whether the drainer reached the broker during a run that started offline."""
        return self.drainer is not None and bool(self.drainer.status.last_success)
