"""The operator's dashboard at ``/ui``: server-rendered HTML pages over :class:`~.admin.Operations`.

Why this shape: pages are plain HTML built here, forms post back, charts are SVG drawn on the server
(:mod:`.charts`). There is no script at all, so nothing is vendored, nothing comes from a CDN, and
a strict Content-Security-Policy (``default-src 'none'``) holds. Every page reads the shared store,
so it looks the same from every replica.

Sign-in: the admin key is posted once; the answer sets a session cookie (``HttpOnly``,
``SameSite=Strict``, ``Secure`` behind TLS) holding a random session id, never the key. Every
write is a form post carrying the session's CSRF token, checked before anything changes.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from html import escape
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson
from sqlalchemy.exc import SQLAlchemyError

from ..errors import ModelwireError
from . import charts, http
from .admin import (
    KeyCreate,
    KeyUpdate,
    KeyView,
    Operations,
    RequestView,
    UsageView,
    parse_body,
    store_unreachable,
)
from .admin_auth import SESSION_SECONDS, AdminGate, Session
from .database import StoreError
from .http import Receive, Scope, Send
from .store import TIME_BUCKETS

COOKIE = "mw_session"
MAX_FORM = 16 * 1024
HTML = b"text/html; charset=utf-8"
SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
# The overview's windows: how far back, and the width of a chart's bar (a UTC hour or day).
WINDOWS = {
    "6h": (6 * 3600.0, "hour"),
    "24h": (86400.0, "hour"),
    "7d": (7 * 86400.0, "day"),
    "30d": (30 * 86400.0, "day"),
}
NAV = (("overview", "Overview"), ("requests", "Requests"), ("keys", "Keys"), ("backends", "Backends"))
Page = Callable[["Dashboard", "Visit"], Awaitable[str]]


class Visit:
    """One dashboard request: its scope, query, form and session."""

    def __init__(self, scope: Scope, session: Session | None) -> None:
        self.scope = scope
        self.path: str = scope["path"]
        self.query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        self.form: dict[str, str] = {}
        self.session = session

    @property
    def https(self) -> bool:
        forwarded = dict(self.scope["headers"]).get(b"x-forwarded-proto", b"")
        return self.scope.get("scheme") == "https" or forwarded.lower() == b"https"


class Redirect(Exception):
    def __init__(self, location: str, cookie: str | None = None) -> None:
        super().__init__(location)
        self.location = location
        self.cookie = cookie


class Dashboard:
    def __init__(self, ops: Operations, gate: AdminGate) -> None:
        self.ops = ops
        self.gate = gate
        self._css = resources.files("modelwire").joinpath("data/ui/style.css").read_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"].rstrip("/") or "/ui", scope["method"]
        if path == "/ui/style.css":
            await http.respond(send, 200, self._css, [(b"cache-control", b"max-age=3600")], b"text/css")
            return
        visit = Visit(scope, None)
        try:
            visit.session = await self.gate.session(_cookies(scope).get(COOKIE))
            if method == "POST":
                visit.form = await _read_form(receive, scope)
            status, body = await self._route(method, path, visit)
        except Redirect as moved:
            headers = [(b"location", moved.location.encode()), *SECURITY_HEADERS]
            if moved.cookie is not None:
                headers.append((b"set-cookie", moved.cookie.encode()))
            await http.respond(send, 303, b"", headers, HTML)
            return
        except (ModelwireError, SQLAlchemyError, StoreError) as exc:
            err = exc if isinstance(exc, ModelwireError) else store_unreachable(exc)
            status, body = (
                err.status,
                self._layout(visit, "Error", f'<p class="error">{escape(err.message)}</p>'),
            )
        await http.respond(send, status, body.encode(), SECURITY_HEADERS, HTML)

    async def _route(self, method: str, path: str, visit: Visit) -> tuple[int, str]:
        if path == "/ui/login":
            return (200, self._login_page(visit)) if method == "GET" else await self._sign_in(visit)
        if visit.session is None:
            raise Redirect("/ui/login")
        if method == "POST":
            self._check_csrf(visit)
            return 200, await self._write(path, visit)
        page = PAGES.get(path)
        if page is not None:
            return 200, await page(self, visit)
        if path.startswith("/ui/requests/"):
            return 200, await self.request_page(visit, path.removeprefix("/ui/requests/"))
        if path == "/ui":
            raise Redirect("/ui/overview")
        return 404, self._layout(visit, "Not found", "<p>There is no such page.</p>")

    # ---------------------------------------------------------------------------- sign-in

    def _login_page(self, visit: Visit, problem: str = "") -> str:
        note = f'<p class="error">{escape(problem)}</p>' if problem else ""
        form = (
            f'{note}<form method="post" action="/ui/login" class="login">'
            '<label>Admin key <input type="password" name="key" autocomplete="off" required autofocus>'
            "</label>"
            '<button type="submit">Sign in</button></form>'
        )
        return self._layout(visit, "Sign in", form, nav=False)

    async def _sign_in(self, visit: Visit) -> tuple[int, str]:
        client = self.gate.client_address(visit.scope)
        try:
            session = await self.gate.sign_in(visit.form.get("key") or None, client)
        except ModelwireError as err:
            return err.status, self._login_page(visit, err.message)
        raise Redirect("/ui/overview", _session_cookie(session.id, visit.https, SESSION_SECONDS))

    def _check_csrf(self, visit: Visit) -> None:
        assert visit.session is not None
        sent = visit.form.get("csrf") or dict(visit.scope["headers"]).get(b"x-csrf-token", b"").decode(
            "latin-1"
        )
        if not sent or not hmac.compare_digest(sent.encode(), visit.session.csrf.encode()):
            raise ModelwireError(
                "the form is stale or forged (CSRF token missing or wrong); reload the page", status=403
            )

    async def _write(self, path: str, visit: Visit) -> str:
        """A form's change; then a redirect, or the page to show (a new key's secret, once)."""
        assert visit.session is not None
        form = visit.form
        if path == "/ui/logout":
            await self.gate.sign_out(visit.session)
            raise Redirect("/ui/login", _session_cookie("", visit.https, 0))
        if path == "/ui/keys":
            created = await self.ops.create_key(parse_body(KeyCreate, _key_form(form, creating=True)))
            return await self.keys_page(visit, created.secret)
        name, _, action = path.removeprefix("/ui/keys/").partition("/")
        if path.startswith("/ui/keys/") and action == "revoke":
            await self.ops.revoke_key(name)
            raise Redirect("/ui/keys")
        if path.startswith("/ui/keys/") and action == "edit":
            await self.ops.update_key(name, parse_body(KeyUpdate, _key_form(form, creating=False)))
            raise Redirect("/ui/keys")
        raise ModelwireError("there is no such form", status=404)

    # ------------------------------------------------------------------------------ pages

    async def overview(self, visit: Visit) -> str:
        window = visit.query.get("since", "24h")
        span, by = WINDOWS.get(window) or WINDOWS[window := "24h"]
        now = time.time()
        query = {"since": f"{now - span:.3f}", "by": by}
        labels, buckets = _buckets(await self.ops.usage(query), by, now - span, now)
        keys = await self.ops.usage({**query, "by": "key"})
        models = await self.ops.usage({**query, "by": "model"})
        picker = " ".join(f'<a href="/ui/overview?since={w}"{_current(w == window)}>{w}</a>' for w in WINDOWS)

        def series(name: str, value: Callable[[UsageView], float | None]) -> tuple[str, list[float | None]]:
            return name, [value(b) if b is not None else None for b in buckets]

        def counts(name: str, value: Callable[[UsageView], float]) -> tuple[str, list[float]]:
            return name, [value(b) if b is not None else 0.0 for b in buckets]

        body = (
            f'<p class="picker">Window: {picker}</p>{_totals([b for b in buckets if b])}<div class="charts">'
            + charts.bars(
                "Requests and errors",
                labels,
                [counts("requests", lambda b: b.requests), counts("errors", lambda b: b.errors)],
            )
            + charts.bars("Cost", labels, [counts("cost $", lambda b: b.cost_usd)], " $")
            + charts.lines(
                "Latency",
                labels,
                [series("p50", lambda b: b.p50_ms), series("p95", lambda b: b.p95_ms)],
                " ms",
            )
            + '</div><div class="columns">'
            + _top("Top keys", "key", keys)
            + _top("Top models", "model", models)
            + "</div>"
        )
        return self._layout(visit, "Overview", body)

    async def requests_page(self, visit: Visit) -> str:
        wanted = {
            k: v
            for k, v in visit.query.items()
            if k in ("key", "model", "status", "request_id", "before") and v
        }
        rows = await self.ops.requests({**wanted, "limit": "100"})
        filters = "".join(
            f'<label>{label} <input name="{name}" value="{escape(wanted.get(name, ""))}"></label>'
            for name, label in (
                ("key", "Key"),
                ("model", "Model"),
                ("status", "Status"),
                ("request_id", "Request id"),
            )
        )
        table = _table(
            (
                "time",
                "request",
                "key",
                "model",
                "backend",
                "status",
                "latency ms",
                "ttft ms",
                "tokens",
                "cost $",
                "hops",
                "error",
            ),
            [_request_cells(r) for r in rows],
        )
        more = ""
        if len(rows) == 100:
            more = f'<p><a href="/ui/requests?{urlencode({**wanted, "before": rows[-1].id})}">Older</a></p>'
        form = f'<form method="get" class="filters">{filters}<button type="submit">Filter</button></form>'
        body = form + table + more
        return self._layout(visit, "Requests", body)

    async def request_page(self, visit: Visit, request_id: str) -> str:
        detail = await self.ops.request(request_id)
        parts = []
        for r in detail.records:
            facts = (
                ("time", _time(r.time)),
                ("key", r.key or "—"),
                ("model", r.model),
                ("backend", f"{r.backend or '—'} ({r.upstream_model or '—'})"),
                ("dialect", r.dialect),
                ("stream", "yes" if r.stream else "no"),
                ("status", f"{r.status} {r.error or ''}"),
                ("latency", f"{r.latency_ms:.1f} ms"),
                ("time to first token", _ms(r.ttft_ms)),
                ("upstream attempts (failover hops)", str(r.hops)),
                (
                    "tokens",
                    f"in {r.input_tokens} (cached {r.cached_tokens}) · "
                    f"out {r.output_tokens} (reasoning {r.reasoning_tokens})",
                ),
                ("cost", _usd(r.cost_usd)),
            )
            parts.append(
                "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts) + "</dl>"
            )
        if detail.capture is None:
            parts.append(
                '<p class="note">Wire capture is off '
                "(set <code>capture:</code> in the config to keep it).</p>"
            )
        else:
            parts.append("<h2>Wire capture</h2>" + "".join(_capture_line(line) for line in detail.capture))
        return self._layout(visit, f"Request {request_id}", "".join(parts))

    async def keys_page(self, visit: Visit, secret: str | None = None) -> str:
        keys = await self.ops.keys()
        assert visit.session is not None
        csrf = visit.session.csrf
        shown = (
            '<div class="secret"><p>The new key, shown only now:</p>'
            f'<code id="new-secret">{escape(secret)}</code></div>'
            if secret
            else ""
        )
        rows = [_key_cells(k, csrf) for k in keys]
        table = _table(
            ("name", "id", "prefix", "source", "models", "limits", "spent / budget", "state", ""),
            rows,
        )
        create = (
            f'<h2>New key</h2><form method="post" action="/ui/keys" class="create">{_csrf(csrf)}'
            '<label>Name <input name="name" required></label>'
            '<label>Models <input name="models" value="*"></label>'
            '<label>RPM <input name="rpm" inputmode="numeric"></label>'
            '<label>TPM <input name="tpm" inputmode="numeric"></label>'
            '<label>Budget $ <input name="budget_usd" inputmode="decimal"></label>'
            '<label><input type="checkbox" name="admin" value="true"> admin</label>'
            '<button type="submit">Create</button></form>'
        )
        return self._layout(visit, "Keys", shown + table + create)

    async def backends_page(self, visit: Visit) -> str:
        report = self.ops.backends_report()
        rows = [
            (
                b["name"],
                b["type"],
                b["wire"],
                b["circuit"],
                ", ".join(_key_state(k) for k in b["keys"]),
                str(b["retries"]),
                str(b["failovers"]),
                str(b["cooldowns"]),
            )
            for b in report["data"]
        ]
        table = _table(
            ("backend", "type", "wire", "circuit", "upstream keys", "retries", "failovers", "cool-downs"),
            rows,
        )
        health = ", ".join(f"{name} {state}" for name, state in report["dependencies"].items())
        note = (
            f'<p class="note">Store and Redis: {escape(health)}. Cool-downs and counts of this replica '
            f"({escape(report['replica'])}).</p>"
        )
        return self._layout(visit, "Backends", note + table)

    # ----------------------------------------------------------------------------- layout

    def _layout(self, visit: Visit, title: str, body: str, *, nav: bool = True) -> str:
        menu = ""
        if nav and visit.session is not None:
            links = "".join(
                f'<a href="/ui/{slug}"{_current(visit.path.startswith(f"/ui/{slug}"))}>{label}</a>'
                for slug, label in NAV
            )
            token = _csrf(visit.session.csrf)
            signout = f'<form method="post" action="/ui/logout">{token}<button>Sign out</button></form>'
            menu = f'<nav>{links}<span class="who">{escape(visit.session.key.name)}</span>{signout}</nav>'
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)} · modelwire</title><link rel="stylesheet" href="/ui/style.css"></head>'
            f"<body><header><strong>modelwire</strong>{menu}</header><main><h1>{escape(title)}</h1>{body}</main></body></html>"
        )


PAGES: dict[str, Page] = {
    "/ui/overview": Dashboard.overview,
    "/ui/requests": Dashboard.requests_page,
    "/ui/keys": Dashboard.keys_page,
    "/ui/backends": Dashboard.backends_page,
}


# ------------------------------------------------------------------------------------ helpers


def _cookies(scope: Scope) -> dict[str, str]:
    raw = dict(scope["headers"]).get(b"cookie", b"").decode("latin-1")
    found: dict[str, str] = {}
    for part in raw.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            found.setdefault(name, value)
    return found


def _session_cookie(value: str, secure: bool, max_age: float) -> str:
    flags = "; Secure" if secure else ""
    return f"{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={int(max_age)}{flags}"


async def _read_form(receive: Receive, scope: Scope) -> dict[str, str]:
    headers = dict(scope["headers"])
    raw = await http.read_body(receive, MAX_FORM, headers.get(b"content-length"))
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


def _key_form(form: dict[str, str], *, creating: bool) -> dict[str, Any]:
    """A key form's fields as the API's body: blanks lift a limit, numbers are numbers."""
    body: dict[str, Any] = {}
    for name, kind in (("rpm", int), ("tpm", int), ("budget_usd", float)):
        text = form.get(name, "").strip()
        if text or not creating:
            try:
                body[name] = kind(text) if text else None
            except ValueError:
                raise ModelwireError(f"{name}: {text!r} is not a number", status=400) from None
    models = [m.strip() for m in form.get("models", "").split(",") if m.strip()]
    if models or not creating:
        body["models"] = models or None
    if creating:
        body["name"] = form.get("name", "").strip()
        body["admin"] = form.get("admin") == "true"
    return body


def _current(yes: bool) -> str:
    return ' class="current"' if yes else ""


def _csrf(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(token)}">'


class Markup(str):
    """Cell text that is already HTML (a link, a form); every other cell is escaped."""

    __slots__ = ()


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return '<p class="note">No records.</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, Markup) else escape(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _request_cells(r: RequestView) -> tuple[str, ...]:
    link = Markup(f'<a href="/ui/requests/{quote(r.request_id, safe="")}">{escape(r.request_id)}</a>')
    return (
        _time(r.time),
        link,
        r.key or "—",
        r.model,
        r.backend or "—",
        str(r.status),
        f"{r.latency_ms:.0f}",
        _ms(r.ttft_ms),
        f"{r.input_tokens} / {r.output_tokens}",
        _usd(r.cost_usd),
        str(r.hops),
        r.error or "",
    )


def _key_cells(k: KeyView, csrf: str) -> tuple[str, ...]:
    limits = f"rpm {k.rpm or '∞'} · tpm {k.tpm or '∞'}"
    budget = f"{_usd(k.spent_usd)} / {_usd(k.budget_usd) if k.budget_usd is not None else '∞'}"
    actions = ""
    if k.source == "store" and k.state != "revoked":
        target = quote(k.id, safe="")
        actions = (
            f'<form method="post" action="/ui/keys/{target}/edit" class="inline">{_csrf(csrf)}'
            f'<input name="models" value="{escape(",".join(k.models))}" size="10" aria-label="models">'
            f'<input name="rpm" value="{k.rpm or ""}" size="4" aria-label="rpm">'
            f'<input name="tpm" value="{k.tpm or ""}" size="6" aria-label="tpm">'
            f'<input name="budget_usd" value="{"" if k.budget_usd is None else k.budget_usd}" size="6" '
            'aria-label="budget">'
            "<button>Save</button></form>"
            f'<form method="post" action="/ui/keys/{target}/revoke" class="inline">{_csrf(csrf)}'
            f'<button class="danger" data-revoke="{escape(k.name)}">Revoke</button></form>'
        )
    name = f"{k.name} (admin)" if k.admin else k.name
    return (
        name,
        k.id,
        f"{k.prefix}…" if k.prefix else "—",
        k.source,
        ", ".join(k.models),
        limits,
        budget,
        k.state,
        Markup(actions),
    )


def _buckets(
    rows: list[UsageView], by: str, since: float, now: float
) -> tuple[list[str], list[UsageView | None]]:
    """Every bucket of the window, in order, with its row or None: quiet hours show as gaps."""
    width, layout = TIME_BUCKETS[by]
    first, last = int(since // width), int(now // width)
    labels = [datetime.fromtimestamp(i * width, UTC).strftime(layout) for i in range(first, last + 1)]
    found = {row.group: row for row in rows}
    return labels, [found.get(label) for label in labels]


def _key_state(key: dict[str, Any]) -> str:
    wait = key["cooldown_seconds"]
    return f"#{key['index']}: " + (f"cooling {wait:.0f} s" if wait else "ready")


def _top(title: str, label: str, rows: list[UsageView]) -> str:
    cells = [(r.group, str(r.requests), str(r.errors), _usd(r.cost_usd)) for r in rows[:10]]
    return (
        f"<section><h2>{escape(title)}</h2>{_table((label, 'requests', 'errors', 'cost $'), cells)}</section>"
    )


def _totals(rows: list[UsageView]) -> str:
    requests = sum(r.requests for r in rows)
    errors = sum(r.errors for r in rows)
    cost = sum(r.cost_usd for r in rows)
    tokens = sum(r.input_tokens + r.output_tokens for r in rows)
    facts = (
        ("requests", f"{requests:,}"),
        ("errors", f"{errors:,}"),
        ("tokens", f"{tokens:,}"),
        ("cost", _usd(cost)),
    )
    return (
        '<div class="totals">'
        + "".join(f"<div><span>{k}</span><b>{v}</b></div>" for k, v in facts)
        + "</div>"
    )


def _capture_line(line: dict[str, Any]) -> str:
    payload = line.get("payload")
    text = payload if isinstance(payload, str) else orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
    summary = f"{line.get('time')} {line.get('direction')} {line.get('backend') or ''}"
    return f"<details><summary>{escape(summary)}</summary><pre>{escape(text)}</pre></details>"


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def _usd(value: float | None) -> str:
    return "—" if value is None else f"${value:.6f}".rstrip("0").rstrip(".") if value else "$0"
