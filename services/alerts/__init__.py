"""The alerts service: rules over the log raise, update and resolve alerts as events.

:mod:`~shaping.services.alerts.config` reads a lab's alert-rules file (checked with the line
at fault), :mod:`~shaping.services.alerts.rules` is the pure engine, :mod:`~shaping.services.
alerts.runner` its Kafka loop (``shaping alerts run`` or ``python -m shaping.services.alerts``),
:mod:`~shaping.services.alerts.log` reads the alerts topic and acknowledges an alert
(``shaping alerts ack``). The notifier (:mod:`shaping.services.notifier`) tells people.
See docs/alerts.md.
"""
