"""The processor's Kafka transport: faust's aiokafka transport, with a fetch wait we choose.

Faust creates its worker's aiokafka consumer with ``fetch_max_wait_ms=1500`` and offers no
setting for it. That wait is what the broker may hold a fetch request open when none of the
partitions it names has data. aiokafka sends one request at a time to a broker, and it leaves
out of it every partition whose fetched records the stream has not consumed yet. So under load
a request can be built while every events partition still holds records: it then names only
quiet partitions (the commands topic), the broker holds it for the whole wait, and no events
partition is fetched until it returns. A SessionEnded that arrives meanwhile waited up to
1.5 s for its assignment, for every session, once a run fell into that rhythm (about one
loaded bench run in three on 2026-12-07; bench/REPORT.md, (c)).

With :attr:`~shaping.services.adapters.settings.Settings.processor_fetch_wait_ms` (20 ms by
default) that delay is bounded by the setting. The cost is an idle worker's empty fetches,
one every 20 ms: an idle processor used 5.8 % of a core with 20 ms and 1.1 % with 1,500 ms
(60 s each, one after the other on the bench broker, 2026-12-08). A lab that cares more for
an idle core than for those seconds can raise it.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when the consumer starts (its fetcher takes it then); there is no
        # other way in, since faust passes its constant to the constructor.
        consumer._fetch_max_wait_ms = transport.fetch_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
    fetch_wait_ms: int


def use_fetch_wait(app: faust.App, fetch_wait_ms: int) -> None:
    """Makes ``app``'s consumer fetch with ``fetch_wait_ms``; call before anything of the app
    touches its transport (topics, tables, agents)."""
    transport = _Transport(app.conf.broker_consumer, app)
    transport.fetch_wait_ms = fetch_wait_ms
    app.transport = transport
