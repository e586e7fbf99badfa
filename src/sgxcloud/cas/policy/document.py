"""From policy text to a plain document, and the document's canonical hash.

YAML is read strictly: duplicate keys (which PyYAML would silently let the
last one win), aliases (which can multiply a small document), and timestamps
(which would turn a date-like string into something JSON cannot hash) are
refused, so what the author sees is what is validated and hashed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.events import AliasEvent

from sgxcloud.canonical import canonical_json
from sgxcloud.cas.errors import PolicyError

MAX_POLICY_BYTES = 1 << 20
# No field needs more; a larger integer could not even be printed back (int/str limit).
MAX_INTEGER = (1 << 63) - 1


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases, duplicate keys or implicit timestamps."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise PolicyError(
                "", f"YAML aliases are not allowed (line {event.start_mark.line + 1})"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise PolicyError(
                    "", f"mapping keys must be strings (line {key_node.start_mark.line + 1})"
                )
            if key in seen:
                raise PolicyError(
                    key, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Drop the timestamp resolver so ``2025-01-01`` stays a string.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_document(text_or_mapping: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The policy as plain JSON-compatible data; ``PolicyError`` if it cannot be read."""
    if isinstance(text_or_mapping, Mapping):
        document: Any = _plain(text_or_mapping)
    else:
        text = text_or_mapping
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PolicyError("", "policy is not UTF-8 text") from exc
        if len(text) > MAX_POLICY_BYTES:
            raise PolicyError("", f"policy is larger than {MAX_POLICY_BYTES} bytes")
        try:
            document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - strict SafeLoader
        except PolicyError:
            raise
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise PolicyError("", f"not valid YAML{where}: {exc.problem}") from exc
        except ValueError as exc:
            # int() refuses integers of more than 4300 digits (CVE-2020-10735 limit).
            raise PolicyError("", "policy contains an integer too large to read") from exc
        except (yaml.YAMLError, RecursionError) as exc:
            raise PolicyError("", "not valid YAML") from exc
        try:
            document = _plain(document)
        except RecursionError as exc:
            raise PolicyError("", "policy is nested too deeply") from exc
    if not isinstance(document, dict):
        raise PolicyError("", "a policy is a mapping with name, access and services")
    return document


def _plain(value: Any) -> Any:
    """Copy a document into plain dicts/lists, refusing non-JSON types and huge integers.

    Applied to parsed YAML too: ``!!binary`` or ``!!set`` values, or an integer
    too large to print, are a clear ``PolicyError``, never a crash later.
    """
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise PolicyError("", "mapping keys must be strings")
            out[key] = _plain(item)
        return out
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
        raise PolicyError("", f"integer out of range (at most {MAX_INTEGER} in magnitude)")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise PolicyError("", f"unsupported value of type {type(value).__name__}")


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """Sorted-key, whitespace-free UTF-8 JSON: formatting and comments do not count."""
    try:
        return canonical_json(document)
    except ValueError as exc:
        raise PolicyError("", "policy contains a value JSON cannot represent (NaN/inf)") from exc


def policy_hash(policy_text: str | bytes | Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical form of a policy document.

    Two texts that differ only in layout, key order or comments hash the same;
    any change of content changes the hash.  Updates name this hash as their
    ``predecessor``.
    """
    return hashlib.sha256(canonical_bytes(parse_document(policy_text))).hexdigest()
