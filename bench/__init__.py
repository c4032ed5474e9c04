"""Shaping's benchmarks: ``python -m bench.run`` prints the figures and rewrites bench/REPORT.md.

Speed is measured here only, never asserted in tests. The modules:

``workload``   simulated training sessions (events and their encoded bytes) to feed the paths
``core``       (a) trial events per second through the pure core and the processing step
``kafka_env``  the benchmark's own broker, topics and processor process (always stopped)
``throughput`` (b) trial events per second through Kafka and the processor, and raw Kafka rates
``latency``    (c) SessionEnded -> AssignmentIssued at the rig, and raw Kafka round trips
``relay``      a minimal kafka-python relay process (the two-hop baseline for latency)
``stats``      medians and percentiles
``report``     machine facts and the Markdown report
``run``        the command line
"""
