"""The admin API's OpenAPI 3.1 document, generated from the route table (:data:`.admin.ROUTES`)
and the pydantic shapes, so it cannot drift from what the API does."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel

from .._version import __version__
from .admin import PREFIX, ROUTES, Route

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
REFUSALS = {
    "400": "the request is malformed",
    "401": "no admin key, or an unknown one",
    "403": "an ordinary key, or no admin key exists (the admin API is closed)",
    "404": "no such key or request",
    "429": "locked out after too many bad keys",
}


@functools.cache
def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelwire admin API",
            "version": __version__,
            "description": "Keys, usage, the request log, backends and the config of a modelwire "
            "gateway. Every route wants an admin key as 'Authorization: Bearer'.",
        },
        "servers": [{"url": "/"}],
        "security": [{"adminKey": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    answer = _ref(route.answer, schemas) if route.answer else {"type": "object"}
    op: dict[str, Any] = {
        "operationId": route.handler,
        "summary": route.summary,
        "parameters": [
            {
                "name": p.name,
                "in": p.where,
                "required": p.where == "path",
                "description": p.description,
                "schema": {"type": "string"},
            }
            for p in route.params
        ],
        "responses": {
            str(route.status): {"description": "OK", "content": {"application/json": {"schema": answer}}},
            **{
                status: {
                    "description": text,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
                for status, text in REFUSALS.items()
            },
        },
    }
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body, schemas)}},
        }
    return op


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """A reference to ``model``'s schema, adding it (and the shapes it uses) to ``schemas``."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


__all__ = ["PREFIX", "document"]
