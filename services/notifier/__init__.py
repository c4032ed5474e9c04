"""The notifier: routes the alerts on ``<prefix>.alerts`` to people by email and chat webhooks.

:mod:`~shaping.services.notifier.routing` reads the routing file and decides who hears what,
once (pure); :mod:`~shaping.services.notifier.channels` sends (SMTP, HTTP);
:mod:`~shaping.services.notifier.runner` is the Kafka loop with retries and escalation
(``shaping notifier run`` or ``python -m shaping.services.notifier``). See docs/alerts.md.
"""
