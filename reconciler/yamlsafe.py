"""Hostile-input-safe YAML loading with line numbers; used by ``specs.py`` only.

Documents are composed by libyaml (no Python tags are ever constructed), then
converted here with a node budget, so alias/anchor expansion ("billion
laughs") fails fast instead of eating memory.  Spec documents may hold only
values JSON can (no dates, no binary), so that the parse cache round-trips
them exactly.  Every mapping key's line is recorded under its dotted path so
that errors can name the line of a field.  No I/O: callers pass text.
"""

from __future__ import annotations

import json
import operator
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:  # libyaml is bundled with PyYAML wheels; fall back to pure Python otherwise
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on the wheel
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

Lines = dict[str, int]
STR_TAG = "tag:yaml.org,2002:str"  # SafeLoader's DEFAULT_SCALAR_TAG
MERGE_TAG = "tag:yaml.org,2002:merge"
MAP_TAG, SEQ_TAG = _Loader.DEFAULT_MAPPING_TAG, _Loader.DEFAULT_SEQUENCE_TAG


class _FastLoader(_Loader):
    """libyaml's loader with a quicker implicit-tag resolver for scalars (the same tags, in the same order).

    PyYAML's ``resolve`` builds two lists per scalar; this one looks the
    resolvers up by the first character only (the path resolvers, never used
    here, still go the original way).  The composer calls ``descend_resolver``
    and ``ascend_resolver`` around every node (400,000 calls for 10,000
    documents) only for path resolvers: here they are C built-ins that do
    nothing, not PyYAML's Python methods that return at once.
    """

    descend_resolver = operator.is_  # type: ignore[assignment]  # (parent, index): nothing to track
    ascend_resolver = ().__len__  # type: ignore[assignment]  # (): nothing to track

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> Any:
        resolvers = self.yaml_implicit_resolvers
        if self.yaml_path_resolvers or None in resolvers:
            return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in resolvers.get(value[:1], ()):
                    if regexp.match(value):
                        return tag
            return STR_TAG
        return MAP_TAG if kind is MappingNode else SEQ_TAG  # what BaseResolver.resolve returns for them


JSON_SCALARS = frozenset(f"tag:yaml.org,2002:{kind}" for kind in ("str", "int", "float", "bool", "null"))
_CONSTRUCTOR = SafeConstructor()
_SCALARS = {
    tag: ctor
    for tag, ctor in SafeConstructor.yaml_constructors.items()
    if tag is not None
    and tag
    not in (
        "tag:yaml.org,2002:map",
        "tag:yaml.org,2002:seq",
        "tag:yaml.org,2002:omap",
        "tag:yaml.org,2002:pairs",
        "tag:yaml.org,2002:set",
    )
}


class YamlProblem(Exception):
    """A document cannot be loaded; ``line`` is 1-based where known."""

    def __init__(self, message: str, line: int | None, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.field = field


CLOUDFORMATION_TAGS = frozenset(
    f"!{name}"
    for name in (
        "Ref", "Sub", "GetAtt", "Join", "If", "Select", "Split", "FindInMap", "ImportValue", "Base64",
        "Cidr", "GetAZs", "Equals", "Not", "And", "Or", "Condition", "Transform", "ToJsonString", "Length",
    )
)  # fmt: skip


def _unsupported_tag(node: Node, path: str) -> YamlProblem:
    if node.tag in CLOUDFORMATION_TAGS:
        return YamlProblem(
            f"CloudFormation intrinsic function {node.tag}; API Gateway imports plain OpenAPI and never resolves it:"
            " expected the literal value",
            node.start_mark.line + 1,
            path,
        )
    return YamlProblem(
        f"unsupported YAML tag {node.tag!r}; expected plain YAML without tags", node.start_mark.line + 1, path
    )


class _Converter:
    def __init__(self, budget: int, record_lines: bool, json_only: bool = False) -> None:
        self.budget = budget
        self.record = record_lines
        self.json_only = json_only  # spec documents: values JSON can hold, so the parse cache round-trips them
        self.lines: Lines = {}

    def convert(self, node: Node, path: str) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise YamlProblem(
                "document expands to too many nodes (YAML aliases/anchors nested too deep?)",
                node.start_mark.line + 1,
                path,
            )
        kind = type(node)
        if kind is ScalarNode:
            if node.tag == STR_TAG:  # most values: the scalar's text is the value (what construct_yaml_str returns)
                return node.value
            ctor = _SCALARS.get(node.tag)
            if ctor is None:
                raise _unsupported_tag(node, path)
            if self.json_only and node.tag not in JSON_SCALARS:
                name = node.tag.rpartition(":")[2]
                raise YamlProblem(
                    f"a YAML {name} value ({node.value!r}); expected a string, number, true/false or null"
                    " (quote it to make it a string)",
                    node.start_mark.line + 1,
                    path,
                )
            return ctor(_CONSTRUCTOR, node)
        if kind is MappingNode:
            if node.tag != "tag:yaml.org,2002:map":
                raise _unsupported_tag(node, path)
            return self._mapping(node, path)  # type: ignore[arg-type]  # checked above: exactly a MappingNode
        if kind is SequenceNode:
            if node.tag != "tag:yaml.org,2002:seq":
                raise _unsupported_tag(node, path)
            return [self.convert(item, f"{path}.{i}" if path else str(i)) for i, item in enumerate(node.value)]
        raise YamlProblem("unsupported YAML node", node.start_mark.line + 1, path)  # pragma: no cover

    def _mapping(self, node: MappingNode, path: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged_keys: set[str] = set()  # from a ``<<`` merge: a key written in the mapping itself overrides them
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                merged = self.convert(value_node, path)
                sources = merged if isinstance(merged, list) else [merged]
                for source in sources:
                    if not isinstance(source, dict):
                        raise YamlProblem(
                            "a merge key (<<) needs a mapping; expected <<: *anchor of a mapping",
                            key_node.start_mark.line + 1,
                            path,
                        )
                    for k, v in source.items():
                        if k not in result:
                            result[k] = v
                            merged_keys.add(k)
                continue
            if type(key_node) is ScalarNode and key_node.tag == STR_TAG and self.budget > 0:
                self.budget -= 1  # a plain string key, as convert would count and return it
                key = key_node.value
            else:
                key = self.convert(key_node, path)
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise YamlProblem(
                    f"expected a string as mapping key, got {type(key).__name__} {key!r}",
                    key_node.start_mark.line + 1,
                    path,
                )
            key = str(key)
            child = f"{path}.{key}" if path else key
            if key in result and key not in merged_keys:
                raise YamlProblem(f"duplicate key {key!r}; expected each key once", key_node.start_mark.line + 1, child)
            if self.record:
                self.lines[child] = key_node.start_mark.line + 1
            merged_keys.discard(key)
            result[key] = self.convert(value_node, child)
        return result


def load_documents(text: str, max_nodes: int = 200_000) -> list[tuple[Any, Lines, int]]:
    """Every non-empty document in ``text`` as (data, lines-by-field, first line)."""
    loader = _FastLoader(text)
    documents: list[tuple[Any, Lines, int]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node guards it
                continue
            converter = _Converter(max_nodes, record_lines=True, json_only=True)
            data = converter.convert(node, "")
            if data is None:
                continue
            documents.append((data, converter.lines, node.start_mark.line + 1))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise YamlProblem(f"invalid YAML: {exc.problem or exc.context}", line) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"invalid YAML: {exc}", None) from None
    finally:
        loader.dispose()
    return documents


def load_definition(text: str, is_json: bool, max_nodes: int = 2_000_000) -> Any:
    """One OpenAPI/Swagger document (JSON or YAML), without line bookkeeping."""
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark, as Windows editors write it
    if is_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise YamlProblem(f"invalid JSON: {exc.msg}", exc.lineno) from None
    loader = _FastLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise YamlProblem("the definition is empty", None)
        return _Converter(max_nodes, record_lines=False).convert(node, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlProblem(f"invalid YAML: {exc.problem or exc.context}", mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"invalid YAML: {exc}", None) from None
    finally:
        loader.dispose()
