"""Files generated from the settings models, so no key's default or doc is typed twice: the
configuration reference (docs/reference/configuration.md), the config file `onboard init`
writes for a real tenant, and the shipped demo config.yaml. `python -m onboard.config`, run
from the repository's root, rewrites the two committed ones; a test fails when they differ."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from .keys import SECTIONS, SETTINGS, Setting, first_sentence
from .settings import BETA_ONLY_CLOUDS

INIT_TEMPLATE = "config.yaml.j2"
REFERENCE_TEMPLATE = "configuration.md.j2"
REFERENCE_PATH = "docs/reference/configuration.md"
DEMO_PATH = "config.yaml"
REGENERATE = "PYTHONPATH=. python -m onboard.config"  # from the repository's root
COMMENT_AT = 30  # the column a key line's comment starts at, when the line is short enough
# The shipped config.yaml: the built-in simulator, made slow, flaky and throttled on purpose to
# show the retries. Each value with the reason it differs from the default.
DEMO: dict[str, tuple[Any, str]] = {
    "graph.endpoint": ("simulator", "the built-in one, for the demo"),
    "auth.tenant_id": ("contoso.onmicrosoft.com", "the simulator's demo tenant"),
    "auth.client_id": ("00000000-0000-0000-0000-0000000000aa", "the simulator's demo app"),
    "pass.timezone": ("Europe/London", "a demo value; a real tenant must set its own"),
    "run.concurrency": (8, "lower here for the demo"),
    "delivery.sender": (
        "onboarding@contoso.com",
        "the sample tenant's mailbox: set method: mail to see delivery",
    ),
    "simulator.tenant": ("samples/tenant.yaml", "the sample tenant"),
    "simulator.latency_ms": (20, "slow on purpose"),
    "simulator.fault_rate": (0.05, "flaky on purpose: 503s are retried"),
    "simulator.throttle_rate": (40, "throttled on purpose: 429s are waited out"),
    "simulator.throttle_burst": (20, "a small burst, so throttling starts soon"),
    "simulator.mail_dir": ("simulator-mail", "the demo's mail, as .eml files"),
}


@dataclass(frozen=True, slots=True)
class TenantSetup:
    """What `onboard init` writes for a real tenant; every other key keeps its default."""

    tenant_id: str
    client_id: str | None  # None only for a system-assigned managed identity
    timezone: str
    method: str = "client_secret"
    certificate_path: str | None = None
    cloud: str = "global"


@dataclass(frozen=True, slots=True)
class _Section:
    """A section as a template shows it: its name, its doc, and its keys' lines."""

    name: str
    doc: str
    lines: list[str]


def render_config(setup: TenantSetup, permissions: Sequence[tuple[str, str]] = ()) -> str:
    """A commented config.yaml for a real tenant, from the template shipped in the package:
    every key, with its default (or the setup's value) and a one-line comment, and the Graph
    permissions to grant (`permissions`: name, what for). It names where the secret comes
    from, never the secret."""
    values = {
        "graph.cloud": setup.cloud,
        "auth.tenant_id": setup.tenant_id,
        "auth.client_id": setup.client_id,
        "auth.method": setup.method,
        "auth.certificate_path": setup.certificate_path,
        "pass.timezone": setup.timezone,
    }
    if setup.cloud in BETA_ONLY_CLOUDS:
        values["graph.api_version"] = "beta"  # the only version that has the pass endpoints
    return _template(INIT_TEMPLATE).render(
        setup=setup,
        sections=_sections(values, {}),
        secret_env=SETTINGS["auth.client_secret_env"].default,
        permissions=permissions,
    )


def demo_config() -> str:
    """The shipped config.yaml: every key, the demo's values noting the default they change."""
    values = {key: value for key, (value, _) in DEMO.items()}
    notes = {
        key: f"default {yaml_scalar(SETTINGS[key].default)}; {why}"
        for key, (_, why) in DEMO.items()
    }
    return _template(INIT_TEMPLATE).render(setup=None, sections=_sections(values, notes))


def reference_markdown() -> str:
    """docs/reference/configuration.md: a table per section, each key with its default, what
    it accepts, its description and the ONBOARD_* variable that overrides it."""
    tables = [
        (name, _doc(model), [_row(s) for s in SETTINGS.values() if s.section == name])
        for name, model in SECTIONS.items()
    ]
    return _template(REFERENCE_TEMPLATE).render(tables=tables, regenerate=REGENERATE)


def generated() -> dict[str, str]:
    """The committed generated files, by path from the repository's root, with their text."""
    return {REFERENCE_PATH: reference_markdown(), DEMO_PATH: demo_config()}


def write_generated(root: Path) -> None:
    for path, text in generated().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")


def yaml_scalar(value: Any) -> str:
    """`value` as YAML on one line: quoted where YAML would misread it ('8:00'), lists in
    brackets, None as null, whole numbers without '.0'."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 60, as a person writes it, not 60.0
    text = yaml.safe_dump(value, default_flow_style=True, width=2**16, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _template(name: str) -> jinja2.Template:
    environment = jinja2.Environment(  # noqa: S701 (YAML and Markdown, not HTML)
        loader=jinja2.PackageLoader("onboard", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template(name)


def _sections(values: dict[str, Any], notes: dict[str, str]) -> list[_Section]:
    """Each section's key lines: `key: value  # comment`, the keys of a nested mapping
    (input.columns) indented under a line of its own."""
    sections: list[_Section] = []
    for name, model in SECTIONS.items():
        lines: list[str] = []
        mapping = name
        for s in (s for s in SETTINGS.values() if s.section == name):
            parent = s.name.rpartition(".")[0]
            if parent not in (name, mapping):
                mapping, inner = parent, parent.rpartition(".")[2]
                doc = first_sentence(model.model_fields[inner].description)
                lines.append(_line(f"{inner}:", _lowered(doc)))
            value = yaml_scalar(values.get(s.name, s.default))
            comment = notes.get(s.name) or _comment(s)
            lines.append(("  " if parent != name else "") + _line(f"{s.key}: {value}", comment))
        sections.append(_Section(name, _doc(model), lines))
    return sections


def _line(text: str, comment: str) -> str:
    return f"{text:<{COMMENT_AT}} # {comment}"


def _comment(setting: Setting) -> str:
    """A key's one-line doc, after its choices when it has some."""
    lead = f"{' | '.join(setting.choices)}: " if setting.choices else ""
    return lead + _lowered(setting.summary)


def _lowered(text: str) -> str:
    """A sentence as a comment starts it: in lower case, but for a word in capitals (IANA)."""
    first = text.split(" ")[0]
    return text if len(first) > 1 and first.isupper() else text[:1].lower() + text[1:]


def _doc(model: type) -> str:
    return (model.__doc__ or "").strip().splitlines()[0]


def _row(setting: Setting) -> list[str]:
    """A key's cells in the reference's table (a | inside one would end it)."""
    cells = [
        f"`{setting.name}`",
        f"`{yaml_scalar(setting.default)}`",
        setting.wanted,
        setting.doc,
        f"`{setting.env}`" if setting.env else "(none)",
    ]
    return [cell.replace("|", "\\|") for cell in cells]
