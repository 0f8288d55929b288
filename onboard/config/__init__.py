"""Configuration: config.yaml, its defaults, and ONBOARD_* environment overrides.

The settings are declared once, as pydantic models (`settings`): each key with its default,
what it accepts and a one-line doc. `load_config` reads the file with a strict YAML reader
(`yamlread`: no anchors, aliases or duplicate keys; YAML 1.2 numbers), lays the ONBOARD_*
variables over it (`load`) and validates the whole with the models; `messages` turns a
mistake into words naming the key and the file or variable. `keys` lists every key from the
models, and `reference` generates from them the configuration reference, the file
`onboard init` writes and the shipped config.yaml.

Every scalar key can be overridden by an environment variable named
``ONBOARD_<SECTION>_<KEY>`` in upper case, e.g. ``ONBOARD_AUTH_TENANT_ID`` or
``ONBOARD_RUN_CONCURRENCY``; the value is read as YAML (so ``8``, ``true``, ``null`` work).
Secrets never live here: only the *names* of the variables or files that hold them.
"""

from .fields import Kind
from .keys import SETTINGS, Setting, config_keys, default_value, env_override_names
from .load import load_config
from .reference import TenantSetup, generated, reference_markdown, render_config
from .secret import Secret
from .settings import (
    ADDRESS,
    AUTH_METHODS,
    CLOUDS,
    DEFAULT_CLIENT_SECRET_ENV,
    MAX_LIFETIME_MINUTES,
    MIN_LIFETIME_MINUTES,
    SIMULATOR_TIMEZONE,
    AuthSettings,
    Columns,
    Config,
    DeliverySettings,
    GraphSettings,
    InputSettings,
    OutputSettings,
    PassSettings,
    RunSettings,
    SimulatorSettings,
    StateSettings,
)
from .values import (
    CERTIFICATE_FILE_LIMIT,
    EXAMPLE_TIMEZONE,
    client_id_problem,
    is_loopback,
    machine_zone,
    tenant_problem,
    timezone_problem,
)

__all__ = [
    "ADDRESS",
    "AUTH_METHODS",
    "CERTIFICATE_FILE_LIMIT",
    "CLOUDS",
    "DEFAULT_CLIENT_SECRET_ENV",
    "EXAMPLE_TIMEZONE",
    "MAX_LIFETIME_MINUTES",
    "MIN_LIFETIME_MINUTES",
    "SETTINGS",
    "SIMULATOR_TIMEZONE",
    "AuthSettings",
    "Columns",
    "Config",
    "DeliverySettings",
    "GraphSettings",
    "InputSettings",
    "Kind",
    "OutputSettings",
    "PassSettings",
    "RunSettings",
    "Secret",
    "Setting",
    "SimulatorSettings",
    "StateSettings",
    "TenantSetup",
    "client_id_problem",
    "config_keys",
    "default_value",
    "env_override_names",
    "generated",
    "is_loopback",
    "load_config",
    "machine_zone",
    "reference_markdown",
    "render_config",
    "tenant_problem",
    "timezone_problem",
]
