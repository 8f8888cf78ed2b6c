"""A small client of a gateway's admin API, for the CLI's ``keys`` and ``usage`` commands run
against a remote gateway (``--url`` / ``MODELWIRE_URL`` with ``--admin-key`` /
``MODELWIRE_ADMIN_KEY``). Standard library only: the CLI should not pay for an HTTP stack to send
a handful of requests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

TIMEOUT = 30.0


class AdminError(Exception):
    """What the gateway (or the network) said went wrong, fit to show as it is."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AdminClient:
    def __init__(self, url: str, admin_key: str) -> None:
        if not admin_key.strip():
            raise AdminError("no admin key: pass --admin-key or set MODELWIRE_ADMIN_KEY")
        self.base = url.rstrip("/") + "/admin/v1"
        self._auth = f"Bearer {admin_key.strip()}"

    def keys(self, *, include_revoked: bool) -> list[dict[str, Any]]:
        return list(self._call("GET", "/keys?" + urlencode({"all": str(include_revoked).lower()}))["data"])

    def create_key(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/keys", body))

    def revoke_key(self, name_or_id: str) -> None:
        self._call("DELETE", "/keys/" + quote(name_or_id, safe=""))

    def usage(self, *, by: str, since: float) -> list[dict[str, Any]]:
        return list(self._call("GET", "/usage?" + urlencode({"by": by, "since": f"{since:.3f}"}))["data"])

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", self._auth)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as reply:
                return json.loads(reply.read() or b"null")
        except urllib.error.HTTPError as err:
            raise AdminError(_message(err.read()) or f"HTTP {err.code}", err.code) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise AdminError(f"cannot reach the gateway at {self.base}: {reason}") from None


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return ""
