"""onboard: issue Microsoft Entra ID Temporary Access Passes in bulk, from the new-hire sheet.

The command line is a thin layer over this library (docs/api.md):

    run(config, inputs=(), *, requests=None, client=None, now=None, ...) -> RunReport
    validate(config, inputs=(), *, requests=None, online=False, ...) -> Validation
    load_config(path, env=None) -> Config
    status(config, run_id=None, *, env, ...) -> StatusReport   (each pass's PassState)
    revoke(config, run_id, *, env, users=(), unused=False, dry_run=False, ...) -> RevokeReport

A run's rows end as Issued, Failed or Skipped (each not issued with its Reason); the
RunReport's RunStatus says how the run ended. onboard.testing holds a fake tenant for tests.

Each name is imported on first use, so `import onboard` stays light (the CLI's `--help`, a
config check) and no module of the package has to import another at load time to get here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config, load_config
    from .connect import Connection
    from .errors import (
        AuditWriteError,
        AuthError,
        ConfigError,
        GraphError,
        InputFileError,
        JournalLocked,
        JournalWriteError,
        OnboardError,
        RunStopped,
    )
    from .job import run
    from .lifecycle import PassState, RevokeReport, StatusReport, revoke, status
    from .outcomes import (
        REASON_HELP,
        Failed,
        Issued,
        Origin,
        Outcome,
        PassRequest,
        Reason,
        ReasonHelp,
        Skipped,
    )
    from .report import RunReport, RunStatus, StopCause
    from .validation import Validation, validate

    __version__: str

# Each public name and the module it comes from.
_HOMES = {
    "run": "job",
    "validate": "validation",
    "Validation": "validation",
    "load_config": "config",
    "status": "lifecycle",
    "revoke": "lifecycle",
    "StatusReport": "lifecycle",
    "RevokeReport": "lifecycle",
    "PassState": "lifecycle",
    "Config": "config",
    "Connection": "connect",
    "RunReport": "report",
    "RunStatus": "report",
    "StopCause": "report",
    "Issued": "outcomes",
    "Failed": "outcomes",
    "Skipped": "outcomes",
    "Outcome": "outcomes",
    "PassRequest": "outcomes",
    "Origin": "outcomes",
    "Reason": "outcomes",
    "ReasonHelp": "outcomes",
    "REASON_HELP": "outcomes",
    "OnboardError": "errors",
    "ConfigError": "errors",
    "InputFileError": "errors",
    "AuthError": "errors",
    "JournalLocked": "errors",
    "RunStopped": "errors",
    "AuditWriteError": "errors",
    "JournalWriteError": "errors",
    "GraphError": "errors",
}

__all__ = [
    "REASON_HELP",
    "AuditWriteError",
    "AuthError",
    "Config",
    "ConfigError",
    "Connection",
    "Failed",
    "GraphError",
    "InputFileError",
    "Issued",
    "JournalLocked",
    "JournalWriteError",
    "OnboardError",
    "Origin",
    "Outcome",
    "PassRequest",
    "PassState",
    "Reason",
    "ReasonHelp",
    "RevokeReport",
    "RunReport",
    "RunStatus",
    "RunStopped",
    "Skipped",
    "StatusReport",
    "StopCause",
    "Validation",
    "__version__",
    "load_config",
    "revoke",
    "run",
    "status",
    "validate",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onboard")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0+source"
