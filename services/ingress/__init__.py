"""The ingress gate: the one writer of ``events`` and ``commands`` for rigs and operators on a
secured cluster (docs/security.md).

Each rig and each operator writes only its own ingress topic (``<prefix>.rig.NAME``,
``<prefix>.operator.NAME``); the gate reads them all by pattern and forwards a record only when
it speaks for the principal that wrote it (:mod:`~shaping.services.ingress.gate`, pure), else
dead-letters it (:mod:`~shaping.services.ingress.runner`, the Kafka loop). Run it with
``shaping ingress run`` or ``python -m shaping.services.ingress``, as the ``ingress`` principal.
"""
