"""The web page's Prometheus metrics (served by ``shaping web --metrics-port``).

- ``shaping_web_requests_total`` (counter; labels ``route``, ``method``, ``status``): requests
  answered, by the route's template (``/mice/{mouse_id}``, never the mouse: one series per
  route, whatever is asked), ``other`` for a path no route takes;
- ``shaping_web_logins_total`` (counter; label ``outcome``: ok, failed): log-in attempts;
- ``shaping_web_actions_total`` (counter; labels ``action``, ``outcome``): the forms posted
  (override, eject, adjust, weigh, water, release), ``outcome`` sent (the command was sent and
  answered), refused (the processor, a check or the person's input said no; the reason was
  shown) or forbidden (no CSRF token, another origin, or a role that may not).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shaping.services.adapters.metrics import Counters

REQUESTS = "shaping_web_requests_total"
LOGINS = "shaping_web_logins_total"
ACTIONS = "shaping_web_actions_total"
OTHER_ROUTE = "other"


class WebMetrics(Counters):
    """The page's counters, in a registry of their own (one per process or test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.requests = self.counter(
            REQUESTS,
            "Requests answered, by route template, method and HTTP status.",
            ("route", "method", "status"),
        )
        self.logins = self.counter(
            LOGINS,
            "Log-in attempts, by outcome (ok, failed).",
            ("outcome",),
        )
        self.actions = self.counter(
            ACTIONS,
            "Forms posted, by action and outcome (sent, refused, forbidden).",
            ("action", "outcome"),
        )

    def count_login(self, ok: bool) -> None:
        self.logins.labels("ok" if ok else "failed").inc()

    def count_action(self, action: str, outcome: str) -> None:
        self.actions.labels(action, outcome).inc()


class CountRequests:
    """ASGI middleware counting each HTTP request under its route's template: the router
    leaves the matched endpoint in the scope, which names the route; the status is read from
    the response's start message (500 when the application raised)."""

    def __init__(self, app: ASGIApp, metrics: WebMetrics, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.templates: dict[int, str] = {}
        for route in routes:
            if isinstance(route, Route):
                self.templates[id(route.endpoint)] = route.path
            elif isinstance(route, Mount):
                self.templates[id(route.app)] = route.path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint: Any = scope.get("endpoint")
            route = self.templates.get(id(endpoint), OTHER_ROUTE)
            method = str(scope.get("method", "GET")).upper()
            if method not in ("GET", "POST", "HEAD"):
                method = "other"
            self.metrics.requests.labels(route, method, str(status[0])).inc()
