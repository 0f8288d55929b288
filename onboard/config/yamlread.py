"""YAML as onboard reads it: PyYAML's SafeLoader refusing anchors and aliases (an alias bomb
expands a few hundred bytes into gigabytes) and keys given twice (a second ``pass:`` would
silently replace the first), reading numbers as YAML 1.2 does (``0120`` is 120, not octal 80).
The same reader takes the config file and every ONBOARD_* value."""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import yaml

from ..errors import ConfigError


class Refused(yaml.MarkedYAMLError):
    """YAML that is valid but refused: an anchor, an alias, or a key given twice. `problem`
    says what and on which line."""


def _refuse(what: str, mark: Any) -> Refused:
    return Refused(
        problem=f"{what} on line {mark.line + 1}: anchors and aliases are not allowed here",
        problem_mark=mark,
    )


_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# Numbers as YAML 1.2 reads them, not YAML 1.1: 0120 is 120 (not octal 80: nothing in this file
# is ever octal, and a person who writes 0120 minutes means 120), 08:30 is text (not the base-60
# number 510), 1e3 is a number. Octal and hexadecimal only with their 0o / 0x prefixes.
_INT = re.compile(r"[-+]?(?:[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(
    r"[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?$"
    r"|[-+]?\.(?:inf|Inf|INF)$|\.(?:nan|NaN|NAN)$"
)


class StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing anchors and aliases (checked as each node is composed,
    before anything is built, so an alias bomb never expands) and keys given twice."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise _refuse(f"an alias (*{event.anchor})", mark)
        if getattr(event, "anchor", None) is not None:
            raise _refuse(f"an anchor (&{event.anchor})", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Hashable, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # not a name (the settings refuse it), or a literal '<<:' merge
            key = self.construct_object(key_node)
            if key in seen:
                raise Refused(
                    problem=f"'{key}' is given twice, on line {seen[key].start_mark.line + 1} "
                    f"and on line {key_node.start_mark.line + 1}: keep one",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node)).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        base = {"0o": 8, "0x": 16}.get(digits[:2], 10)
        try:
            return sign * int(digits[2:] if base != 10 else digits, base)
        except ValueError:  # more digits than Python converts (4300): no setting is near that
            raise Refused(
                problem=f"a number of {len(digits)} digits on line {node.start_mark.line + 1}: "
                "too large",
                problem_mark=node.start_mark,
            ) from None


# Its own copy of the resolvers (SafeLoader's stay as they are), with the YAML 1.2 numbers.
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(_INT_TAG, _INT, list("-+0123456789"))
StrictLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+.0123456789"))
StrictLoader.add_constructor(_INT_TAG, StrictLoader.construct_yaml_int)


def _yaml_error(exc: yaml.YAMLError, where: str) -> ConfigError:
    """Only the problem and where it is: PyYAML's own message quotes the line, which may hold
    an inline secret."""
    problem = getattr(exc, "problem", None) or "cannot be parsed"
    if isinstance(exc, Refused):
        return ConfigError(f"{where}: {problem}")
    mark = getattr(exc, "problem_mark", None)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return ConfigError(f"{where} is not valid YAML: {problem}{at}")


def read_yaml(text: str, where: str) -> Any:
    """`text` read as YAML by StrictLoader; a ConfigError naming `where` and the line if not."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, where) from None
    except RecursionError:  # [[[[... nested thousands deep: no configuration looks like that
        raise ConfigError(f"{where}: the YAML is nested too deeply to be a configuration") from None


def read_env_value(name: str, text: str) -> Any:
    """An ONBOARD_* value read as YAML (so 8, true, null work); text that is not YAML is taken
    as it is, but an anchor, an alias or a key given twice is refused, naming the variable."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except Refused as exc:
        raise _yaml_error(exc, f"environment variable {name}") from None
    except RecursionError:
        raise ConfigError(
            f"environment variable {name}: the YAML is nested too deeply to be a setting"
        ) from None
    except yaml.YAMLError:
        return text
