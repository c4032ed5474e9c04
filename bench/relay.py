"""A minimal relay: copies every record of one topic to another, as fast as kafka-python can.

``python -m bench.relay BOOTSTRAP IN_TOPIC OUT_TOPIC`` runs until SIGTERM. It is the baseline
for the latency benchmark: two Kafka hops with a Python process in the middle that waits for
the broker's acknowledgement of each output before reading on (as the processor does), but does
no decoding, no domain work and no state.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from bench.kafka_env import rig_producer, topic_reader


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m bench.relay BOOTSTRAP IN_TOPIC OUT_TOPIC", file=sys.stderr)
        return 2
    bootstrap, source, target = argv
    running = True

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer = topic_reader(bootstrap, [source], "bench-relay-in")
    producer = rig_producer(bootstrap, "bench-relay-out")
    print(f"relaying {source} -> {target}", flush=True)
    try:
        while running:
            for records in consumer.poll(timeout_ms=100).values():
                for record in records:
                    producer.send(target, key=record.key, value=record.value)
                producer.flush()
    finally:
        producer.close()
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
