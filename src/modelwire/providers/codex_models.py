"""The models of the Codex route: its own catalog, and the ones it serves that the catalog omits.

The catalog is ``GET {base}/models?client_version=…`` answering ``{"models": [{"slug": …}, …]}``.
It leaves out models newer than the ``client_version`` asking (``minimal_client_version``) and
models the backend keeps hidden, although a signed-in account is served them all the same; so
the listing adds the models modelwire knows the route serves (:data:`SERVED`) when the catalog
omitted them, rather than have clients refuse a model that works.
"""

from __future__ import annotations

from typing import Any

CLIENT_VERSION = "0.169.0"  # the Codex CLI release whose wire modelwire speaks
CATALOG_QUERY = f"?client_version={CLIENT_VERSION}"
SERVED = ("gpt-5.5",)


def catalog_models(doc: dict[str, Any]) -> list[str]:
    """The model slugs of a catalog answer, in its order."""
    models = doc.get("models")
    if not isinstance(models, list):
        return []
    return [m["slug"] for m in models if isinstance(m, dict) and isinstance(m.get("slug"), str)]


def with_served(listed: list[str]) -> list[str]:
    """``listed``, then each model the route serves that it omitted."""
    return [*listed, *(m for m in SERVED if m not in listed)]
