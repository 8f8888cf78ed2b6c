"""A scripted OpenAI account: the sign-in server (auth.openai.com) and the Codex backend in one.

Why: the Codex route's behaviours are about tokens crossing three parties (the issuer, the Codex
backend and modelwire's store), so the fake keeps real token state rather than scripted replies.
The issuer mints access tokens (JWTs with an ``exp``) and single-use refresh tokens, exactly as
the real one rotates them: a refresh token spent twice is refused with ``refresh_token_reused``,
which is what a refresh not serialised across replicas runs into. The Codex backend accepts only
access tokens the issuer minted and has not revoked, answers ``POST /responses`` with a Responses
event stream, and ``GET /models`` with a catalog in the Codex shape.

Device-code sign-in: ``device`` sets how the user behaves on the verification page: approve after
some polls, decline, let the code expire, or device sign-in turned off (404).

It runs in a thread with its own loop, so a gateway subprocess can reach it. It is written from
the wire as docs/research/codex-and-azure.md records it and imports nothing from modelwire, so a
misreading of the wire cannot hide on both sides of it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .fake_upstream import Answer, Ids, Reply, ResponsesDialect

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
ACCOUNT = "acct-fake-42"


def jwt(claims: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJub25lIn0.{payload}.sig"


ID_TOKEN = jwt({"https://api.openai.com/auth": {"chatgpt_account_id": ACCOUNT}, "email": "dev@example.com"})


@dataclass
class Device:
    """How the user answers the device code: ``approve`` after ``pending`` polls, ``deny`` or
    ``expire`` after them, or ``disabled`` (device sign-in turned off)."""

    outcome: str = "approve"
    pending: int = 1
    interval: str = "5"


@dataclass
class Exchange:
    grant_type: str
    fields: dict[str, str]


@dataclass
class CodexCall:
    path: str
    bearer: str
    account: str | None
    body: Any


@dataclass
class FakeAccount:
    access_ttl: float = 3600.0
    refresh_delay: float = 0.0  # seconds a refresh takes, to widen race windows
    refuse_all: bool = False  # the backend answers 401 to every token (an account without the plan)
    catalog: list[str] = field(default_factory=lambda: ["gpt-5.4", "gpt-5.4-mini"])
    device: Device = field(default_factory=Device)
    root: str = ""
    exchanges: list[Exchange] = field(default_factory=list)
    calls: list[CodexCall] = field(default_factory=list)
    polls: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = 0
        self._access: set[str] = set()
        self._refresh: dict[str, bool] = {}  # refresh token -> spent
        self._codes: dict[str, str] = {}  # authorization code -> PKCE verifier
        self._ids = Ids()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- what tests use ----------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return self.root

    @property
    def codex_url(self) -> str:
        return self.root + "/backend-api/codex"

    def mint(self, *, ttl: float | None = None) -> dict[str, str]:
        """A fresh grant (as the token endpoint answers it); ``ttl`` may be negative (expired)."""
        with self._lock:
            self._counter += 1
            n = self._counter
            access = jwt({"exp": int(time.time() + (self.access_ttl if ttl is None else ttl)), "n": n})
            self._access.add(access)
            self._refresh[f"rt-{n}"] = False
        return {"access_token": access, "refresh_token": f"rt-{n}", "id_token": ID_TOKEN}

    def auth_json(self, *, ttl: float | None = None, last_refresh: float | None = None) -> dict[str, Any]:
        """An ``auth.json`` as the Codex CLI writes it, holding a fresh grant."""
        grant = self.mint(ttl=ttl)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_refresh or time.time()))
        return {"auth_mode": "chatgpt", "tokens": {**grant, "account_id": ACCOUNT}, "last_refresh": stamp}

    def revoke(self, access_token: str) -> None:
        with self._lock:
            self._access.discard(access_token)

    def revoke_all(self) -> None:
        with self._lock:
            self._access.clear()

    def refreshes(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.grant_type == "refresh_token"]

    def responses(self) -> list[CodexCall]:
        return [c for c in self.calls if c.path.endswith("/responses")]

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeAccount:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-codex", daemon=True)
        self._thread.start()
        if not ready.wait(30) or not self.root:
            raise RuntimeError("fake account did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        finally:
            ready.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_post("/api/accounts/deviceauth/usercode", self._usercode)
        app.router.add_post("/api/accounts/deviceauth/token", self._device_token)
        app.router.add_get("/backend-api/codex/models", self._models)
        app.router.add_post("/backend-api/codex/responses", self._responses)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.root = f"http://127.0.0.1:{sock.getsockname()[1]}"

    # -- the issuer --------------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        if request.content_type == "application/x-www-form-urlencoded":
            form = {k: str(v) for k, v in (await request.post()).items()}
        else:
            form = {k: str(v) for k, v in (await request.json()).items()}
        grant = form.get("grant_type", "")
        self.exchanges.append(Exchange(grant, form))
        if form.get("client_id") != CLIENT_ID:
            return web.json_response({"error": "invalid_client"}, status=401)
        if grant == "refresh_token":
            return await self._refresh_grant(form.get("refresh_token", ""))
        if grant == "authorization_code":
            return self._code_grant(form)
        return web.json_response({"error": "unsupported_grant_type"}, status=400)

    async def _refresh_grant(self, token: str) -> web.Response:
        with self._lock:
            spent = self._refresh.get(token)
            if spent is False:
                self._refresh[token] = True
        if spent is None:
            return web.json_response({"error": {"code": "refresh_token_invalidated"}}, status=401)
        if spent:
            return web.json_response({"error": {"code": "refresh_token_reused"}}, status=401)
        await asyncio.sleep(self.refresh_delay)
        return web.json_response(self.mint())

    def _code_grant(self, form: dict[str, str]) -> web.Response:
        verifier = self._codes.pop(form.get("code", ""), None)
        if verifier is None or verifier != form.get("code_verifier"):
            return web.json_response({"error": "invalid_grant"}, status=400)
        if form.get("redirect_uri") != f"{self.root}/deviceauth/callback":
            return web.json_response({"error": "invalid_redirect_uri"}, status=400)
        return web.json_response(self.mint())

    async def _usercode(self, request: web.Request) -> web.Response:
        if self.device.outcome == "disabled":
            return web.json_response({"detail": "Not Found"}, status=404)
        body = await request.json()
        if body != {"client_id": CLIENT_ID}:
            return web.json_response({"error": "invalid_request"}, status=400)
        return web.json_response(
            {"device_auth_id": "dev-auth-1", "user_code": "WXYZ-1234", "interval": self.device.interval}
        )

    async def _device_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"device_auth_id": "dev-auth-1", "user_code": "WXYZ-1234"}:
            return web.json_response({"error": "invalid_request"}, status=400)
        self.polls += 1
        if self.polls <= self.device.pending:
            return web.json_response({"error": "authorization_pending"}, status=403)
        if self.device.outcome == "deny":
            return web.json_response({"error": {"code": "access_denied"}}, status=400)
        if self.device.outcome == "expire":
            return web.json_response({"error": {"code": "expired_token"}}, status=400)
        verifier = f"verifier-{self.polls}"
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        self._codes["code-from-device"] = verifier
        return web.json_response(
            {"authorization_code": "code-from-device", "code_challenge": challenge, "code_verifier": verifier}
        )

    # -- the Codex backend -------------------------------------------------------------------------

    def _authorized(self, request: web.Request, body: Any) -> bool:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.calls.append(CodexCall(request.path, bearer, request.headers.get("ChatGPT-Account-ID"), body))
        with self._lock:
            return bearer in self._access and not self.refuse_all

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request, None):
            return _unauthorized()
        if not request.query.get("client_version"):
            return web.json_response({"detail": "client_version is required"}, status=400)
        return web.json_response(
            {
                "models": [
                    {"slug": slug, "context_window": 272_000, "visibility": "list"} for slug in self.catalog
                ]
            }
        )

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not self._authorized(request, body):
            return _unauthorized()
        if body.get("stream") is not True or body.get("store") is not False or not body.get("instructions"):
            return web.json_response(
                {"detail": "Stream must be true, store false, instructions set"}, status=400
            )
        if any(isinstance(t, dict) and t.get("type") == "image_generation" for t in body.get("tools") or []):
            return await self._image_call(request, body)
        dialect = ResponsesDialect(self._ids, body["model"], body)
        stream = dialect.stream(Answer.of(Reply.text(f"codex says hi to {body['model']}"), body))
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        for index, frame in enumerate(stream.frames):
            await reply.write(stream.encode(index, frame))
        await reply.write_eof()
        return reply

    async def _image_call(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """The image_generation tool's answer: one finished image_generation_call item (its result
        names the tool's model, in base64) and the response's completion."""
        tool = next(t for t in body["tools"] if t.get("type") == "image_generation")
        result = base64.b64encode(f"image by {tool.get('model', 'gpt-image-1')}".encode()).decode()
        item = {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": result}
        events = [
            {"type": "response.output_item.done", "output_index": 0, "item": item, "sequence_number": 1},
            {
                "type": "response.completed",
                "sequence_number": 2,
                "response": {"id": "resp_img", "status": "completed"},
            },
        ]
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        for event in events:
            await reply.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        await reply.write_eof()
        return reply


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": {"message": "Your authentication token has expired.", "code": "token_expired"}}, status=401
    )
