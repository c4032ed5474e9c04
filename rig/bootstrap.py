"""The rig's composition point: the one place its codec, store, transport and task are built
and handed down.

Nothing below this module builds a codec of its own: the store, the outbox drainer, the
assignment follower and the Kafka transports are given the one built here (tests build their
own). ``shaping rig ...`` commands call these functions; so can a program that runs a rig.
"""

from __future__ import annotations

from shaping.rig.agent import Display, RigAgent
from shaping.rig.config import RigConfig
from shaping.rig.faults import FaultPlan
from shaping.rig.link.outbox import OutboxTransport
from shaping.rig.link.store import RigStore
from shaping.rig.task.pins import PinTask
from shaping.schemas.codec import EventCodec, default_codec
from shaping.schemas.topics import TopicNames


def rig_codec() -> EventCodec:
    """The codec a rig writes and reads events with: every schema this release knows."""
    return default_codec()


def open_store(config: RigConfig, codec: EventCodec) -> RigStore:
    """The rig's store (``state_dir/rig.sqlite``), brought to the current format."""
    return RigStore(config.store_path, codec)


def outbox_transport(
    config: RigConfig, store: RigStore, codec: EventCodec, faults: FaultPlan | None = None
) -> OutboxTransport:
    """The rig's Kafka transport: its outbox in ``store``, the drainer and the follower."""
    return OutboxTransport(
        store,
        config.link,
        TopicNames.with_prefix(config.topic_prefix),
        config.mice,
        client_id=f"shaping-rig-{config.rig_id}",
        codec=codec,
        faults=faults,
    )


def rig_agent(
    config: RigConfig,
    display: Display,
    store: RigStore | None = None,
    codec: EventCodec | None = None,
    faults: FaultPlan | None = None,
) -> RigAgent:
    """The agent ``shaping rig run`` runs: reach's task on the config's pins (or mock pins),
    over the outbox.

    Args:
        config: the rig's config.
        display: where progress goes.
        store: the rig's store (opened from the config if not given).
        codec: the codec the rig reads Kafka with (default: the store's; tests give a subset
            to stand for an older rig release).
        faults: crash tests only: the faults to inject.
    """
    store = store if store is not None else open_store(config, rig_codec())
    transport = outbox_transport(config, store, codec if codec is not None else store.codec, faults)
    return RigAgent(config, display, transport, PinTask(config, store, display), faults=faults)
