"""Who may use the admin API and the dashboard: holders of an admin key, and no one else.

Admin keys are client keys marked ``admin`` (``modelwire keys create --admin``, or ``admin: true``
in the config). They are kept apart from ordinary keys (:class:`~.auth.KeyBook`): an ordinary key
is refused here (403) and an admin key is refused by the proxy. With no admin key in force the
admin doors stay shut for everyone, even on an open loopback gateway: an unconfigured operator
surface fails closed. Bad admin keys count towards the same per-address lockout as bad client keys.

The dashboard signs an operator in once and then uses a session (:class:`Session`): the cookie
carries a random session id, the store keeps only its hash, the admin key's hash and a CSRF token,
so every replica recognises the session and a revoked admin key ends its sessions at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import AuthenticationError, PermissionDeniedError, RateLimitError
from .auth import ClientKey, extract_key
from .http import Scope
from .lockout import Lockout
from .state import State
from .store import hash_secret
from .sync import StoreSync

SESSION_SECONDS = 8 * 3600.0


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    key: ClientKey
    csrf: str


class AdminGate:
    def __init__(
        self, state: State, lockout: Lockout, sync: StoreSync, client_address: Callable[[Scope], str]
    ) -> None:
        self.state = state
        self.lockout = lockout
        self.sync = sync
        self.client_address = client_address

    async def admin_from_headers(self, scope: Scope) -> ClientKey:
        """The admin key a request carries (``Authorization: Bearer`` or ``x-api-key``; never in the
        query string, which ends up in access logs)."""
        secret = extract_key(dict(scope["headers"]), b"")
        return await self.admin(secret, self.client_address(scope))

    async def admin(self, secret: str | None, client: str) -> ClientKey:
        """The admin key with this secret, or the error that refuses it."""
        locked = self.lockout.locked(client)
        if locked is not None:
            raise RateLimitError(
                f"too many failed attempts with bad keys; try again in {locked:.0f} s",
                retry_after=locked,
                code="locked_out",
            )
        if secret is None:
            raise AuthenticationError(
                "missing admin key: send 'Authorization: Bearer <admin key>'", code="missing_api_key"
            )
        digest = hash_secret(secret)
        key = self.state.keys.lookup_admin(digest)
        if key is None:
            await self.sync.check_for_new_key()  # an admin key created a moment ago works at once
            key = self.state.keys.lookup_admin(digest)
        if key is None:
            raise self._refusal(secret, client)
        if key.expired(time.time()):
            raise AuthenticationError(f"the admin key {key.name!r} has expired", code="expired_api_key")
        self.lockout.success(client)
        return key

    def _refusal(self, secret: str, client: str) -> Exception:
        keys = self.state.keys
        if not keys.has_admin:
            return PermissionDeniedError(
                "the admin API is closed: no admin key exists; create one with "
                "'modelwire keys create --admin' or add 'admin: true' to a key in the config",
                code="admin_closed",
            )
        if keys.lookup(secret) is not None:
            return PermissionDeniedError("this key is not an admin key", code="not_admin")
        self.lockout.failure(client)
        return AuthenticationError("invalid admin key", code="invalid_api_key")

    # ------------------------------------------------------------------------------ sessions

    async def sign_in(self, secret: str | None, client: str) -> Session:
        key = await self.admin(secret, client)
        assert secret is not None and self.state.store is not None
        session_id, csrf = await asyncio.to_thread(
            self.state.store.create_session, hash_secret(secret), ttl=SESSION_SECONDS
        )
        return Session(session_id, key, csrf)

    async def session(self, session_id: str | None) -> Session | None:
        """The live session with this id whose admin key is still in force, or None."""
        store = self.state.store
        if not session_id or store is None or len(session_id) > 100:
            return None
        found = await asyncio.to_thread(store.session, session_id)
        if found is None:
            return None
        key_hash, csrf = found
        key = self.state.keys.lookup_admin(key_hash)
        if key is None or key.expired(time.time()):
            return None
        return Session(session_id, key, csrf)

    async def sign_out(self, session: Session) -> None:
        if self.state.store is not None:
            await asyncio.to_thread(self.state.store.end_session, session.id)
