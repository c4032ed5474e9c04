"""The ``shaping web`` application (Starlette, server-rendered Jinja2 templates).

Pages: ``/login``; ``/`` the lab at a glance (stages, weight %, today's water, the welfare
gate; held mice and those at or below their minimum weight first); ``/mice/{id}`` a mouse
(welfare: the gate, weight and water charts; timeline, learning curve, decisions and their
evidence, the forms); ``/healthz`` (no login) says it is up. The forms post to
``/mice/{id}/override``, ``/adjust``, ``/eject`` (training), ``/weigh``, ``/water`` and
``/release`` (welfare), and to ``/logout``.

Safety: every page but the login page, ``/healthz`` and the stylesheet needs a logged-in user,
read again from the users file on each request (a user removed or given another role counts at
once). The session is a signed cookie (SessionMiddleware; ``SameSite=Strict``, ``HttpOnly``).
Every form carries the session's CSRF token, compared in constant time; a post without it, or
from another origin, is refused with 403 and changes nothing. Roles are checked on the server
(:mod:`.roles`), not only by hiding the forms. Templates escape everything (autoescape), and a
Content-Security-Policy forbids scripts and any other origin.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from shaping.schemas.events import WATER_KINDS, WATER_TYPES
from shaping.schemas.identifiers import check_id, check_name
from shaping.schemas.text import printable
from shaping.services.domain import CurriculumCatalog
from shaping.services.domain.welfare import DEFAULT_POLICY, WelfarePolicy
from shaping.services.operator.errors import OperatorError, UnknownMouseError
from shaping.services.operator.husbandry import HusbandryError
from shaping.services.operator.interventions import InterventionError
from shaping.services.operator.queries import StageCheck
from shaping.services.web import charts
from shaping.services.web.commands import Interventions
from shaping.services.web.metrics import CountRequests, WebMetrics
from shaping.services.web.queries import mouse_page, open_alerts, overview
from shaping.services.web.roles import may
from shaping.services.web.users import User, UsersFile

HERE = Path(__file__).parent
SESSION_COOKIE = "shaping_web"
SESSION_MAX_AGE_S = 12 * 3600
MAX_REASON = 2000
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class WebConfig:
    """What the application serves and where it writes.

    Attributes:
        engine: the status tables (read).
        users: the users file.
        secret: the key that signs the session cookies.
        interventions: the page's actions, as commands.
        catalog: the curricula (stage choices on the forms, terminal stages); None: unknown.
        https_only: send the session cookie over HTTPS only (behind a TLS proxy).
        where: where the data comes from, for the footer.
        policy: the lab's welfare policy (expected weight, thresholds, water requirement,
            the lab's day).
        metrics: the page's Prometheus counters (requests, log-ins, actions); None: none.
    """

    engine: Engine
    users: UsersFile
    secret: str
    interventions: Interventions
    catalog: CurriculumCatalog | None = None
    https_only: bool = False
    where: str = ""
    policy: WelfarePolicy = DEFAULT_POLICY
    metrics: WebMetrics | None = None


def _time(value: Any) -> str:
    if not isinstance(value, datetime):
        return ""
    try:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:  # pandas' NaT is a datetime that has no time
        return ""


def _percent(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, float) else "-"


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["time"] = _time
    env.filters["percent"] = _percent
    env.filters["number"] = _number
    env.filters["printable"] = printable
    return Jinja2Templates(env=env)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _security_headers() -> Middleware:
    async def dispatch(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.media_type == "text/html":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return Middleware(BaseHTTPMiddleware, dispatch=dispatch)


def create_app(config: WebConfig) -> Starlette:
    """The application over ``config``."""
    templates = _templates()
    is_terminal = _terminal_check(config.catalog)
    metrics = config.metrics or WebMetrics()

    def csrf_token(request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str) or len(token) < 32:
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return token

    def current_user(request: Request) -> User | None:
        name = request.session.get("user")
        if not isinstance(name, str):
            return None
        user = config.users.get(name)
        if user is None:
            request.session.pop("user", None)
        return user

    def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        user = current_user(request)
        flashes = request.session.pop("flash", [])
        base = {
            "user": user,
            "may": (lambda action: user is not None and may(user.role, action)),
            "csrf": csrf_token(request),
            "flashes": flashes if isinstance(flashes, list) else [],
            "where": config.where,
        }
        return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)

    def flash(request: Request, kind: str, text: str) -> None:
        request.session.setdefault("flash", []).append({"kind": kind, "text": text})

    async def checked_form(request: Request) -> dict[str, str]:
        """The posted form, after the CSRF and origin checks (raises _Refused)."""
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.url.netloc:
            raise _Refused(403, "refused: this form was posted from another site")
        form = await request.form(max_files=0, max_fields=50)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        expected = request.session.get("csrf")
        given = fields.get("csrf", "")
        if not isinstance(expected, str) or not hmac.compare_digest(
            expected.encode(), given.encode()
        ):
            raise _Refused(
                403,
                "refused: the form has expired or did not come from this page (missing or "
                "wrong CSRF token); reload the page and try again",
            )
        return fields

    def refused(request: Request, exc: _Refused) -> Response:
        return render(
            request, "error.html", {"title": "Refused", "message": exc.message}, exc.status
        )

    async def login_page(request: Request) -> Response:
        if current_user(request) is not None:
            return RedirectResponse("/", status_code=303)
        return render(request, "login.html", {"error": None, "name": ""})

    async def login(request: Request) -> Response:
        try:
            form = await checked_form(request)
        except _Refused as exc:
            return refused(request, exc)
        name = form.get("name", "").strip()[:200]
        password = form.get("password", "")[:1000]
        user = await run_in_threadpool(config.users.authenticate, name, password)
        metrics.count_login(user is not None)
        if user is None:
            return render(
                request, "login.html", {"error": "wrong name or password", "name": name}, 401
            )
        request.session.clear()
        request.session["user"] = user.name
        request.session["csrf"] = secrets.token_urlsafe(32)
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request) -> Response:
        try:
            await checked_form(request)
        except _Refused as exc:
            return refused(request, exc)
        request.session.clear()
        flash(request, "ok", "logged out")
        return RedirectResponse("/login", status_code=303)

    def login_required(request: Request) -> User | Response:
        user = current_user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        return user

    async def lab(request: Request) -> Response:
        user = login_required(request)
        if isinstance(user, Response):
            return user
        try:
            rows = await run_in_threadpool(overview, config.engine, is_terminal, config.policy)
            alerts = await run_in_threadpool(open_alerts, config.engine)
        except OperatorError as exc:
            return render(request, "error.html", {"title": "Cannot read", "message": str(exc)}, 503)
        needing = sum(1 for r in rows if r.needs_person)
        held = sum(1 for r in rows if r.welfare.gate == "held" and not r.ejected)
        mice = {r.mouse_id for r in rows}
        others = [
            a for key, items in sorted((alerts or {}).items()) if key not in mice for a in items
        ]
        return render(
            request,
            "overview.html",
            {
                "rows": rows,
                "needing": needing,
                "held": held,
                "policy": config.policy,
                "day": config.policy.day_of(datetime.now(UTC)).isoformat(),
                "alerts_known": alerts is not None,
                "other_alerts": others,
            },
        )

    def path_mouse(request: Request) -> str:
        raw = str(request.path_params["mouse_id"])
        try:
            return check_id(raw, "mouse id")
        except ValueError as exc:
            raise _Refused(404, str(exc)) from exc

    async def mouse(request: Request) -> Response:
        user = login_required(request)
        if isinstance(user, Response):
            return user
        try:
            mouse_id = path_mouse(request)
            page = await run_in_threadpool(
                mouse_page, config.engine, mouse_id, is_terminal, config.policy
            )
        except _Refused as exc:
            return refused(request, exc)
        except UnknownMouseError as exc:
            return render(
                request, "error.html", {"title": "No such mouse", "message": str(exc)}, 404
            )
        except OperatorError as exc:
            return render(request, "error.html", {"title": "Cannot read", "message": str(exc)}, 503)
        stages, adjustable = _choices(config.catalog, page.row.curriculum, page.row.stage)
        return render(
            request,
            "mouse.html",
            {
                "page": page,
                "row": page.row,
                "curve": charts.learning_curve(page.sessions),
                "weight_chart": charts.weight_chart(page.weight_chart),
                "water_chart": charts.water_chart(page.water_days),
                "stages": stages,
                "adjustable": adjustable,
                "water_kinds": WATER_KINDS,
                "water_types": WATER_TYPES,
            },
        )

    def action(
        what: str, run: Callable[[User, str, dict[str, str]], str], needs_reason: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            user = login_required(request)
            if isinstance(user, Response):
                return user
            try:
                form = await checked_form(request)
                mouse_id = path_mouse(request)
                if not may(user.role, what):
                    raise _Refused(
                        403, f"refused: a {user.role} may not {what} (ask a lab manager)"
                    )
            except _Refused as exc:
                metrics.count_action(what, "forbidden")
                return refused(request, exc)
            try:
                reason = form.get("reason", "").strip()
                if needs_reason and not reason:
                    raise InterventionError("give a reason: every action is audited")
                if len(reason) > MAX_REASON:
                    raise InterventionError(
                        f"the reason is too long (at most {MAX_REASON} characters)"
                    )
                message = await run_in_threadpool(run, user, mouse_id, form)
            except (InterventionError, HusbandryError) as exc:
                metrics.count_action(what, "refused")
                flash(request, "error", f"{what}: {exc}")
            else:
                metrics.count_action(what, "sent")
                flash(request, "ok", message)
            return RedirectResponse(f"/mice/{mouse_id}", status_code=303)

        return endpoint

    def _report(delivery: Any) -> str:
        return " · ".join(line.strip() for line in delivery.report())

    def do_override(user: User, mouse_id: str, form: dict[str, str]) -> str:
        stage = form.get("stage", "").strip()
        try:
            check_name(stage, "stage")
        except ValueError as exc:
            raise InterventionError(str(exc)) from exc
        seen = form.get("from_stage", "").strip() or None
        delivery = config.interventions.override(
            user.name, mouse_id, stage, form.get("reason", ""), seen
        )
        return _report(delivery)

    def do_eject(user: User, mouse_id: str, form: dict[str, str]) -> str:
        if form.get("confirm") != "yes":
            raise InterventionError(
                "tick the box to confirm: an ejected mouse gets no more sessions"
            )
        return _report(config.interventions.eject(user.name, mouse_id, form.get("reason", "")))

    def do_adjust(user: User, mouse_id: str, form: dict[str, str]) -> str:
        sets = [line.strip() for line in form.get("set", "").splitlines() if line.strip()]
        clears = [name.strip() for name in form.get("clear", "").split(",") if name.strip()]
        return _report(
            config.interventions.adjust(user.name, mouse_id, sets, clears, form.get("reason", ""))
        )

    def do_weigh(user: User, mouse_id: str, form: dict[str, str]) -> str:
        grams = _positive(form.get("grams", ""), "the weight", "grams")
        scale = form.get("scale", "").strip() or None
        recorded = config.interventions.weigh(
            user.name, mouse_id, grams, confirmed=form.get("confirm") == "yes", scale_id=scale
        )
        return recorded.report()

    def do_water(user: User, mouse_id: str, form: dict[str, str]) -> str:
        kind = form.get("kind", "supplement")
        ml = 0.0 if kind == "free_access" and not form.get("ml", "").strip() else None
        if ml is None:
            ml = _positive(form.get("ml", ""), "the water", "mL")
        recorded = config.interventions.water(
            user.name, mouse_id, ml, kind, form.get("water_type", "water")
        )
        return recorded.report()

    def do_release(user: User, mouse_id: str, form: dict[str, str]) -> str:
        return config.interventions.release(
            user.name, mouse_id, form.get("reason", "").strip()
        ).report()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def not_found(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", {"title": "Not found", "message": "no such page"}, 404)

    routes = [
        Route("/", lab),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/mice/{mouse_id}", mouse),
        Route("/mice/{mouse_id}/override", action("override", do_override), methods=["POST"]),
        Route("/mice/{mouse_id}/eject", action("eject", do_eject), methods=["POST"]),
        Route("/mice/{mouse_id}/adjust", action("adjust", do_adjust), methods=["POST"]),
        Route("/mice/{mouse_id}/weigh", action("weigh", do_weigh, False), methods=["POST"]),
        Route("/mice/{mouse_id}/water", action("water", do_water, False), methods=["POST"]),
        Route("/mice/{mouse_id}/release", action("release", do_release), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        _security_headers(),
        Middleware(
            SessionMiddleware,
            secret_key=config.secret,
            session_cookie=SESSION_COOKIE,
            max_age=SESSION_MAX_AGE_S,
            same_site="strict",
            https_only=config.https_only,
        ),
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={404: not_found})
    app.add_middleware(CountRequests, metrics=metrics, routes=routes)
    return app


def _positive(text: str, what: str, unit: str) -> float:
    """A number a person typed (a decimal comma accepted); raises HusbandryError saying what
    is wrong."""
    cleaned = text.strip().replace(",", ".")
    try:
        value = float(cleaned)
    except ValueError:
        raise HusbandryError(f"{what} must be a number of {unit} (got {text.strip()!r})") from None
    if not math.isfinite(value) or value <= 0:
        raise HusbandryError(f"{what} must be a positive number of {unit} (got {cleaned})")
    return value


def _terminal_check(catalog: CurriculumCatalog | None) -> StageCheck:
    from shaping.services.operator.queries import terminal_stage_check

    return terminal_stage_check(catalog)


def _choices(
    catalog: CurriculumCatalog | None, curriculum: str, stage: str | None
) -> tuple[list[str], dict[str, str]]:
    """The stages of the mouse's curriculum, and the parameters adjustable at its stage with
    what they allow (both empty when the curricula here do not know it)."""
    name, _, version = curriculum.partition(" ")
    if catalog is None or not name:
        return [], {}
    try:
        engine: Any = catalog.get(name, version or None)
    except Exception:
        return [], {}
    stages = list(getattr(engine, "stage_names", []))
    adjustable: dict[str, str] = {}
    if stage is not None:
        try:
            compiled = engine.stage(stage)
        except Exception:
            compiled = None
        for param, rule in sorted((getattr(compiled, "adjustable", None) or {}).items()):
            bounds = []
            if getattr(rule, "minimum", None) is not None:
                bounds.append(f"min {rule.minimum:g}")
            if getattr(rule, "maximum", None) is not None:
                bounds.append(f"max {rule.maximum:g}")
            if getattr(rule, "choices", None):
                bounds.append("one of " + ", ".join(str(c) for c in rule.choices))
            adjustable[param] = "; ".join(bounds)
    return stages, adjustable
