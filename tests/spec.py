"""Validate JSON against the vendored OpenAI, Anthropic and Gemini specs.

The specs under ``tests/specs/`` are byte-for-byte copies of the vendors' files (see SOURCES.md).
Tests use this module to prove that what modelwire sends or emits has the shape the real API
documents, so that the fakes and the gateway cannot drift from the vendor unnoticed.

Every schema is addressed by its name under ``components/schemas``. The ones our tests lean on
all exist under the names one would guess (checked against the OpenAI spec, info.version 2.3.0):
``CreateResponse``, ``CreateChatCompletionRequest``, ``CreateChatCompletionResponse``,
``CreateChatCompletionStreamResponse``, ``Response``, ``ResponseStreamEvent``,
``CreateEmbeddingRequest``, ``CreateEmbeddingResponse``, ``ListModelsResponse``, ``Model``,
``ErrorResponse`` (and ``Error``, the object inside it).

Three things about the specs shape this code:

* Both files say ``openapi: 3.1.0`` but still carry the OpenAPI 3.0 keyword ``nullable: true``
  in about a hundred places (e.g. ``finish_reason`` of a stream chunk). Draft 2020-12 ignores
  that keyword, so a literal reading would reject ``"finish_reason": null``. The loaded documents
  are rewritten once so that ``nullable`` means what its authors meant (``null`` is allowed).
* Their ``oneOf`` unions overlap: the message the SDK itself sends as Responses input,
  ``{"type": "message", "role": "user", "content": [...]}``, is both an ``EasyInputMessage`` and
  an ``InputMessage``, so a strict ``oneOf`` rejects it as "valid under each of". The unions are
  meant as tagged unions, so every ``oneOf`` is read as ``anyOf``.
* ``ResponseStreamEvent`` is an ``anyOf`` of ~50 event schemas, and request items are unions
  discriminated by ``type`` or ``role``. A plain "not valid under any of the given schemas" is
  useless, so failing unions are explained through the member whose ``type``/``role`` value
  matches the instance (and validation tries that member first, which is much faster).

Gemini has no official OpenAPI file (SOURCES.md). Two sources are combined instead:

* ``GEMINI``: the UNOFFICIAL OpenAPI document generated from Google's docs, for the shapes and
  types of ``GenerateContentRequest``, ``GenerateContentResponse``, ``CountTokensRequest`` and
  ``CountTokensResponse``. It is loaded with every ``additionalProperties: false`` removed: it
  knows only the lowerCamelCase spelling and both lacks real fields and carries SDK-only ones,
  so it is not trusted to say which names exist.
* ``GEMINI_PROTOS``: the official ``google.ai.generativelanguage.v1beta`` protos, parsed once,
  which decide which field names exist. REST uses the proto3 JSON mapping, and Google accepts
  both the proto name (``function_call``) and its JSON name (``functionCall``); a name is
  unknown only when it is neither. The walk follows the protos' message types into nested
  objects and stops at ``google.protobuf.Struct``/``Value`` (free JSON such as ``args``).
  ``gemini_errors`` validates the lowerCamelCase form of an instance, so a snake_case request
  is type-checked too.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import relevance
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_DIR = Path(__file__).parent / "specs"

_UNIONS = ("anyOf", "oneOf")
_DISCRIMINATORS = ("type", "role", "object")
_MAX_MESSAGE = 400


class Spec:
    """One OpenAPI document, loaded lazily once per process, with cached validators per schema."""

    def __init__(self, filename: str, uri: str, *, open_objects: bool = False) -> None:
        self.path = SPEC_DIR / filename
        self.uri = uri
        self.open_objects = open_objects  # drop ``additionalProperties: false`` (see GEMINI below)
        self._tables: dict[tuple[int, str], list[set[Any] | None]] = {}

    @functools.cached_property
    def document(self) -> dict[str, Any]:
        """The parsed spec, adapted to Draft 2020-12 (see the module docstring)."""
        doc: dict[str, Any]
        with self.path.open("rb") as f:
            if self.path.suffix == ".json":
                doc = json.load(f)
            else:
                doc = yaml.load(f, Loader=yaml.CSafeLoader)
        _normalise(doc)
        if self.open_objects:
            _open_objects(doc)
        return doc

    @functools.cached_property
    def registry(self) -> Registry[Any]:
        registry: Registry[Any] = Registry().with_resource(
            self.uri, DRAFT202012.create_resource(self.document)
        )
        return registry

    @property
    def schemas(self) -> dict[str, Any]:
        schemas: dict[str, Any] = self.document["components"]["schemas"]
        return schemas

    def schema(self, name: str) -> dict[str, Any]:
        """The raw schema called ``name``; KeyError names the spec file to make typos obvious."""
        try:
            schema: dict[str, Any] = self.schemas[name]
        except KeyError:
            raise KeyError(f"no schema {name!r} in {self.path.name}") from None
        return schema

    def validator(self, name: str) -> Draft202012Validator:
        self.schema(name)
        return self._validator(f"#/components/schemas/{name}")

    @functools.cache  # noqa: B019 - the two Spec instances live for the whole process
    def _validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{self.uri}{pointer}"}, registry=self.registry)

    def errors(self, name: str, instance: Any) -> list[str]:
        """Readable failures (``$.json.path: message``), one per independent problem."""
        if self._accepted_by_member(self.schema(name), instance):
            return []
        found = sorted(self.validator(name).iter_errors(instance), key=lambda e: list(e.path))
        messages = [_format(leaf) for error in found for leaf in self._leaves(error)]
        return list(dict.fromkeys(messages))

    def check(self, name: str, instance: Any) -> None:
        messages = self.errors(name, instance)
        if messages:
            raise AssertionError(f"not a valid {self.path.name} {name}:\n  " + "\n  ".join(messages))

    def unknown_fields(self, name: str, instance: Any) -> list[str]:
        """Top-level keys of ``instance`` that the schema declares nowhere in its ``properties``."""
        if not isinstance(instance, dict):
            return []
        declared = self._properties(self.schema(name), instance)
        return [key for key in instance if key not in declared]

    def _accepted_by_member(self, schema: dict[str, Any], instance: Any) -> bool:
        """Fast path for big ``anyOf`` unions (stream events): try only the discriminated member.

        Any valid member makes an ``anyOf`` valid, so this never hides an error; it only spares
        trying ~50 event schemas in turn (2 ms per event otherwise).
        """
        members = schema.get("anyOf", [])
        for index in self._matching_members(members, instance):
            ref = members[index].get("$ref", "")
            if ref.startswith("#/") and self._validator(ref).is_valid(instance):
                return True
        return False

    # -- schema walking -------------------------------------------------------------------------

    def _resolve(self, schema: Any) -> Any:
        """Follow ``$ref`` chains; all refs in these specs are local to the one document."""
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            resolver = self.registry.resolver(base_uri=self.uri)
            schema = resolver.lookup(ref).contents
        return schema

    def _properties(
        self, schema: Any, instance: dict[str, Any], seen: frozenset[int] = frozenset()
    ) -> set[str]:
        """Property names declared by ``schema`` through ``$ref``/``allOf`` and matching union members."""
        schema = self._resolve(schema)
        if not isinstance(schema, dict) or id(schema) in seen:
            return set()
        seen |= {id(schema)}
        names = set(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            names |= self._properties(part, instance, seen)
        for keyword in _UNIONS:
            members = schema.get(keyword, [])
            chosen = self._matching_members(members, instance) or range(len(members))
            for index in chosen:
                names |= self._properties(members[index], instance, seen)
        return names

    def _discriminator_values(self, member: Any, key: str) -> set[Any] | None:
        """The values a union member accepts for ``key`` (from ``enum``/``const``), None if open."""
        member = self._resolve(member)
        if not isinstance(member, dict):
            return None
        prop = self._resolve(member.get("properties", {}).get(key))
        if isinstance(prop, dict):
            if "const" in prop:
                return {prop["const"]}
            if "enum" in prop:
                return set(prop["enum"])
        values: set[Any] | None = None
        for part in member.get("allOf", []):
            found = self._discriminator_values(part, key)
            if found is not None:
                values = (values or set()) | found
        return values

    def _matching_members(self, members: list[Any], instance: Any) -> list[int]:
        """Indexes of the union members selected by the instance's ``type``/``role``/``object``."""
        if not isinstance(instance, dict):
            return []
        for key in _DISCRIMINATORS:
            value = instance.get(key)
            if not isinstance(value, str):
                continue
            table = self._discriminator_table(members, key)
            matching = [index for index, accepted in enumerate(table) if accepted and value in accepted]
            if matching:
                return matching
        return []

    def _discriminator_table(self, members: list[Any], key: str) -> list[set[Any] | None]:
        """Per member, the values it accepts for ``key``; memoised since unions are re-checked a lot."""
        memo_key = (id(members), key)
        if memo_key not in self._tables:
            self._tables[memo_key] = [self._discriminator_values(member, key) for member in members]
        return self._tables[memo_key]

    def _leaves(self, error: ValidationError) -> Iterator[ValidationError]:
        """Explain a failed union through the member the instance was evidently meant to be."""
        if error.validator not in _UNIONS or not error.context:
            yield error
            return
        members = error.schema[error.validator]
        chosen = set(self._matching_members(members, error.instance))
        context = [e for e in error.context if not chosen or e.relative_schema_path[0] in chosen]
        if not context:  # the intended member passed; nothing more specific to say
            yield error
            return
        if len(chosen) == 1:
            for sub in context:
                yield from self._leaves(sub)
            return
        ranked = sorted(context, key=relevance)
        if len(ranked) > 1 and relevance(ranked[0]) == relevance(ranked[1]) and not chosen:
            yield error
            return
        yield from self._leaves(ranked[0])


def _format(error: ValidationError) -> str:
    message = error.message
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return f"{error.json_path}: {message}"


def _normalise(node: Any) -> Any:
    """Rewrite a spec in place, bottom-up: ``oneOf`` as ``anyOf``, then ``nullable`` as null-or."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            node[index] = _normalise(item)
        return node
    if not isinstance(node, dict):
        return node
    for key, value in node.items():
        node[key] = _normalise(value)
    _one_of_as_any_of(node)
    return _rewrite_nullable(node)


def _one_of_as_any_of(node: dict[str, Any]) -> None:
    members = node.get("oneOf")
    if not isinstance(members, list):  # absent, or a *property* called "oneOf"
        return
    del node["oneOf"]
    if "anyOf" in node:
        node.setdefault("allOf", []).append({"anyOf": members})
    else:
        node["anyOf"] = members


def _rewrite_nullable(node: dict[str, Any]) -> Any:
    """Turn OpenAPI 3.0 ``nullable: true`` into Draft 2020-12 terms (null is also accepted)."""
    if _absorb_bare_nullable(node.get("allOf")):
        node["nullable"] = True
    nullable = node.get("nullable")
    if not isinstance(nullable, bool):  # a *property* called "nullable", not the keyword
        return node
    del node["nullable"]
    if not nullable:
        return node
    kind = node.get("type")
    if isinstance(kind, str):
        node["type"] = [kind, "null"]
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        return node
    if kind is None and not any(k in node for k in ("$ref", "allOf", *_UNIONS, "enum", "const")):
        return node  # no constraint at all: null already passes
    return {"anyOf": [node, {"type": "null"}]}


def _absorb_bare_nullable(parts: Any) -> bool:
    """``allOf: [X, {nullable: true}]`` means "X or null"; drop the bare part and report it."""
    if not isinstance(parts, list):
        return False
    bare = [p for p in parts if isinstance(p, dict) and p.get("nullable") is True and _is_bare(p)]
    for part in bare:
        parts.remove(part)
    return bool(bare)


def _open_objects(node: Any) -> None:
    """Remove every ``additionalProperties: false`` so that unknown keys are left to another check."""
    if isinstance(node, list):
        for item in node:
            _open_objects(item)
    elif isinstance(node, dict):
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]
        for value in node.values():
            _open_objects(value)


def _is_bare(schema: dict[str, Any]) -> bool:
    return not any(k in schema for k in ("type", "$ref", "allOf", *_UNIONS, "enum", "const", "properties"))


OPENAI = Spec("openai-openapi.yml", "urn:openai")
ANTHROPIC = Spec("anthropic-openapi.json", "urn:anthropic")


def openai_errors(schema_name: str, instance: Any) -> list[str]:
    """Why ``instance`` is not a valid OpenAI ``schema_name`` (empty list when it is)."""
    return OPENAI.errors(schema_name, instance)


def assert_openai(schema_name: str, instance: Any) -> None:
    OPENAI.check(schema_name, instance)


def anthropic_errors(schema_name: str, instance: Any) -> list[str]:
    """Why ``instance`` is not a valid Anthropic ``schema_name`` (empty list when it is)."""
    return ANTHROPIC.errors(schema_name, instance)


def assert_anthropic(schema_name: str, instance: Any) -> None:
    ANTHROPIC.check(schema_name, instance)


def unknown_fields(schema_name: str, instance: Any) -> list[str]:
    """Top-level keys the OpenAI schema does not declare: fields the real API would not know."""
    return OPENAI.unknown_fields(schema_name, instance)


def anthropic_unknown_fields(schema_name: str, instance: Any) -> list[str]:
    return ANTHROPIC.unknown_fields(schema_name, instance)


# ---------------------------------------------------------------------------------------------
# Gemini: field names from the official protos
# ---------------------------------------------------------------------------------------------

_PROTO_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[A-Za-z_][\w.]*|-?\d+|\S')
_PROTO_SCALARS = frozenset(
    {"double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64"}
    | {"fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes"}
)
_PROTO_FREE_JSON = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})


def json_name(proto_name: str) -> str:
    """The proto3 JSON name of a field: ``thought_signature`` -> ``thoughtSignature``."""
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), proto_name)


@dataclass(frozen=True)
class ProtoField:
    name: str  # as declared (snake_case)
    json: str  # lowerCamelCase
    message: str | None  # full name of the field's message type; None for scalars, enums, free JSON
    is_map: bool = False


class Protos:
    """The messages of a directory of ``.proto`` files, reduced to what a JSON walk needs.

    A small recursive-descent reader: ``message`` (nested too), ``oneof`` (its fields belong to
    the message), ``map<K, V>``, ``enum``/``service``/``option``/``reserved`` skipped. Type names
    resolve with protobuf scoping (innermost scope first). Types from files not vendored here
    (``retriever.proto``, ``google.type.*``, ``Duration``) are not walked into.

    ``live_fields`` names fields the live API has but these protos lack (SOURCES.md lists them),
    as ``{message: {proto_name, ...}}``; they are accepted and not walked into.
    """

    def __init__(self, directory: Path, package: str, live_fields: dict[str, set[str]]) -> None:
        self.directory = directory
        self.package = package
        self.live_fields = live_fields

    @functools.cached_property
    def messages(self) -> dict[str, dict[str, ProtoField]]:
        """Full message name -> fields, each under both spellings."""
        raw: dict[str, list[tuple[str, str, bool]]] = {}
        enums: set[str] = set()
        for path in sorted(self.directory.glob("*.proto")):
            _ProtoReader(path.read_text(), raw, enums).read()
        messages: dict[str, dict[str, ProtoField]] = {}
        for full, declared in raw.items():
            fields: dict[str, ProtoField] = {}
            for name, type_name, is_map in declared:
                target = _resolve_proto_type(type_name, full, raw, enums)
                field = ProtoField(name, json_name(name), target, is_map)
                fields[name] = fields[field.json] = field
            short = full.removeprefix(self.package + ".")
            for name in self.live_fields.get(short, set()):
                fields[name] = fields[json_name(name)] = ProtoField(name, json_name(name), None)
            messages[full] = fields
        return messages

    def message(self, name: str) -> dict[str, ProtoField]:
        try:
            return self.messages[f"{self.package}.{name}"]
        except KeyError:
            raise KeyError(f"no message {name!r} in {self.directory}/*.proto") from None

    def walk(self, name: str, instance: Any) -> tuple[Any, list[str]]:
        """``instance`` with every known key in its lowerCamelCase spelling, and the JSON paths of
        the keys the protos know in neither spelling."""
        self.message(name)
        unknown: list[str] = []
        return self._walk(f"{self.package}.{name}", instance, "$", unknown), unknown

    def _walk(self, message: str | None, value: Any, path: str, unknown: list[str]) -> Any:
        if isinstance(value, list):
            return [self._walk(message, item, f"{path}[{i}]", unknown) for i, item in enumerate(value)]
        if message is None or not isinstance(value, dict):
            return value
        fields = self.messages[message]
        camel: dict[str, Any] = {}
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                unknown.append(f"{path}.{key}")
                camel[key] = item
            elif field.is_map and isinstance(item, dict):
                camel[field.json] = {
                    k: self._walk(field.message, v, f"{path}.{key}.{k}", unknown) for k, v in item.items()
                }
            else:
                camel[field.json] = self._walk(field.message, item, f"{path}.{key}", unknown)
        return camel


class _ProtoReader:
    """Reads one ``.proto`` file's messages into ``raw`` (full name -> (field, type, is_map))."""

    def __init__(self, text: str, raw: dict[str, list[tuple[str, str, bool]]], enums: set[str]) -> None:
        text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
        text = re.sub(r"//[^\n]*", " ", text)
        self.tokens = _PROTO_TOKEN.findall(text)
        self.raw = raw
        self.enums = enums
        self.pos = 0

    def read(self) -> None:
        package = ""
        while self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            if token == "package":
                package = self.tokens[self.pos + 1]
                self._statement()
            elif token == "message":
                self._message(package)
            elif token == "enum":
                self.enums.add(f"{package}.{self.tokens[self.pos + 1]}")
                self._block()
            elif token == "service":
                self._block()
            else:  # syntax, import, option
                self._statement()

    def _statement(self) -> None:
        """Skip to just past the ``;`` ending this statement (brackets may hold braces)."""
        depth = 0
        while True:
            token = self.tokens[self.pos]
            self.pos += 1
            if token in "[{(":
                depth += 1
            elif token in "]})":
                depth -= 1
            elif token == ";" and depth == 0:
                return

    def _block(self) -> None:
        """Skip ``NAME { ... }`` (the keyword is at ``pos``)."""
        while self.tokens[self.pos] != "{":
            self.pos += 1
        depth = 0
        while True:
            token = self.tokens[self.pos]
            self.pos += 1
            if token == "{":
                depth += 1
            elif token == "}":
                depth -= 1
                if depth == 0:
                    return

    def _message(self, scope: str) -> None:
        full = f"{scope}.{self.tokens[self.pos + 1]}"
        fields = self.raw.setdefault(full, [])
        self.pos += 3  # message NAME {
        while self.tokens[self.pos] != "}":
            token = self.tokens[self.pos]
            if token == "message":
                self._message(full)
            elif token == "enum":
                self.enums.add(f"{full}.{self.tokens[self.pos + 1]}")
                self._block()
            elif token == "oneof":
                self.pos += 3  # oneof NAME {
                while self.tokens[self.pos] != "}":
                    if self.tokens[self.pos] == "option":
                        self._statement()
                    else:
                        self._field(fields)
                self.pos += 1
            elif token in ("reserved", "option", "extensions"):
                self._statement()
            elif token == ";":
                self.pos += 1
            else:
                self._field(fields)
        self.pos += 1

    def _field(self, fields: list[tuple[str, str, bool]]) -> None:
        tokens, pos = self.tokens, self.pos
        if tokens[pos] in ("repeated", "optional", "required"):
            pos += 1
        if tokens[pos] == "map":  # map < K , V > name = N
            fields.append((tokens[pos + 6], tokens[pos + 4], True))
        else:
            fields.append((tokens[pos + 1], tokens[pos], False))
        self.pos = pos
        self._statement()


def _resolve_proto_type(
    type_name: str, scope: str, raw: dict[str, list[tuple[str, str, bool]]], enums: set[str]
) -> str | None:
    """The full name of a message type as seen from ``scope``; None for anything not walked into."""
    if type_name in _PROTO_SCALARS or type_name in _PROTO_FREE_JSON:
        return None
    parts = scope.split(".")
    while parts:
        candidate = ".".join(parts) + "." + type_name
        if candidate in raw:
            return candidate
        if candidate in enums:
            return None
        parts.pop()
    return type_name if type_name in raw else None


GEMINI = Spec("gemini/gemini-native.openapi.UNOFFICIAL.json", "urn:gemini", open_objects=True)
GEMINI_PROTOS = Protos(
    SPEC_DIR / "gemini",
    "google.ai.generativelanguage.v1beta",
    # The v1beta protos trail the live API here (SOURCES.md, "Caveat").
    live_fields={"ThinkingConfig": {"thinking_level"}, "FunctionCall": {"partial_args"}},
)


def gemini_unknown_fields(schema_name: str, instance: Any) -> list[str]:
    """JSON paths of keys, at any depth, that the Gemini protos know in neither spelling.

    ``schema_name`` is both the OpenAPI schema and the proto message: ``GenerateContentRequest``,
    ``GenerateContentResponse``, ``CountTokensRequest``, ``CountTokensResponse``.
    """
    return GEMINI_PROTOS.walk(schema_name, instance)[1]


def gemini_errors(schema_name: str, instance: Any) -> list[str]:
    """Why ``instance`` (in either key spelling) does not fit the Gemini OpenAPI ``schema_name``."""
    return GEMINI.errors(schema_name, GEMINI_PROTOS.walk(schema_name, instance)[0])


def assert_gemini(schema_name: str, instance: Any) -> None:
    """Fail on schema errors and on unknown fields."""
    messages = gemini_errors(schema_name, instance)
    messages += [f"{path}: unknown field" for path in gemini_unknown_fields(schema_name, instance)]
    if messages:
        raise AssertionError(f"not a valid Gemini {schema_name}:\n  " + "\n  ".join(messages))
