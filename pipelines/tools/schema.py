"""The one place a tool's JSON Schema (its `parameters`) is compiled: `$ref`s resolve within the schema, never by
fetching.

Left to its defaults, jsonschema retrieves a `$ref` it cannot resolve with a blocking `urlopen`: any http(s) URL
(past the tools' address guard) or a `file://` path, on the event loop and with no timeout. Tool schemas come from
API callers, so every validator here is built on a registry whose retrieval refuses. A definition is refused when
it is stored if a `$ref` is not local (`#...`) or leads nowhere (`ref_problems`); one stored before that check
fails to be applied instead (`UncheckableSchema`), and still fetches nothing.
"""

from __future__ import annotations

from typing import Any

import referencing.jsonschema
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable

_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def _refuse(uri: str):
    raise NoSuchResource(ref=uri)


# Immutable, so shared. jsonschema adds its bundled meta-schemas to it: those are looked up, not fetched.
NO_RETRIEVAL: Registry = Registry(retrieve=_refuse)


class UncheckableSchema(Exception):
    """The schema cannot be applied (a `$ref` that leads nowhere, or to a loop): nothing was checked."""


def validator(schema: dict[str, Any]) -> Validator:
    return validator_for(schema)(schema, registry=NO_RETRIEVAL)


def check_schema(schema: dict[str, Any]) -> None:
    """Raises jsonschema's SchemaError when `schema` is not valid for its dialect (the meta-schemas are bundled)."""
    validator_for(schema).check_schema(schema)


def errors(schema: dict[str, Any], instance: Any) -> list[ValidationError]:
    """What is wrong with `instance` for `schema`, ordered by where; raises UncheckableSchema when the schema
    cannot be applied."""
    try:
        return sorted(validator(schema).iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    except Exception as exc:  # noqa: BLE001 (see below: a failed check, reported, never the caller's crash)
        # Stored schemas are API callers' (and may predate `ref_problems`): whatever jsonschema trips on (a $ref
        # that leads nowhere or to a non-schema, ValueError from a bad pointer, RecursionError from a $ref loop)
        # must cost this one check, not the request or the call.
        raise UncheckableSchema(_why(schema, exc)) from None


def ref_problems(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(dotted path of the `$ref`, what is wrong) for each reference that is not local or does not lead to a schema.

    Every value is searched, not only the places a dialect reads as schemas: a local pointer may lead anywhere in
    the document, and what it leads to is then read as a schema."""
    cls = validator_for(schema)
    spec = referencing.jsonschema.specification_with(cls.ID_OF(cls.META_SCHEMA) or "",
                                                     default=referencing.jsonschema.DRAFT202012)
    problems: list[tuple[str, str]] = []
    pending: list[tuple[Any, tuple[str, ...], Any]] = [(schema, (), NO_RETRIEVAL.resolver_with_root(
        spec.create_resource(schema)))]
    while pending:  # iterative: a deeply nested schema must not exhaust the stack
        node, path, resolver = pending.pop()
        if isinstance(node, list):
            pending.extend((item, (*path, str(i)), resolver) for i, item in reversed(list(enumerate(node))))
            continue
        if not isinstance(node, dict):
            continue
        resolver = _within(resolver, spec, node)
        for keyword in _REF_KEYWORDS:
            ref = node.get(keyword)
            if isinstance(ref, str) and (problem := _ref_problem(resolver, ref)) is not None:
                problems.append((".".join((*path, keyword)), problem))
        pending.extend((value, (*path, str(key)), resolver) for key, value in reversed(list(node.items())))
    return problems


def _within(resolver, spec, node: dict[str, Any]):
    """The resolver for `node`: a nested "$id" moves the base that "#..." is read against."""
    try:
        if isinstance(spec.id_of(node), str):
            return resolver.in_subresource(spec.create_resource(node))
    except (AttributeError, TypeError, ValueError):  # e.g. a draft-4 property named "id": data, not an identifier
        pass
    return resolver


def _ref_problem(resolver, ref: str) -> str | None:
    if not ref.startswith("#"):
        return f"{ref!r} is not a local reference: only ones within this schema (\"#/$defs/...\") are allowed"
    try:
        target = resolver.lookup(ref).contents
    except (Unresolvable, LookupError, TypeError, ValueError):  # ValueError: e.g. a non-number index into a list
        return f"{ref!r} does not resolve within this schema"
    if not isinstance(target, dict | bool):
        return f"{ref!r} does not lead to a schema"
    return None


def _why(schema: dict[str, Any], exc: Exception) -> str:
    try:
        found = ref_problems(schema)
    except Exception:  # noqa: BLE001 (the explanation must not fail where the check did)
        found = []
    if found:
        return f"{found[0][0]}: {found[0][1]}"
    if isinstance(exc, RecursionError):
        return "its $refs loop without end"
    return f"jsonschema cannot apply it ({type(exc).__name__})"
