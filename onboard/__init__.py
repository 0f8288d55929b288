"""onboard: issue Microsoft Entra ID Temporary Access Passes in bulk, from the new-hire sheet."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onboard")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"

from .config import Config, load_config
from .errors import AuthError, ConfigError, GraphError, InputFileError, OnboardError
from .outcomes import Failed, Issued, PassRequest, Skipped

__all__ = [
    "AuthError",
    "Config",
    "ConfigError",
    "Failed",
    "GraphError",
    "InputFileError",
    "Issued",
    "OnboardError",
    "PassRequest",
    "Skipped",
    "__version__",
    "load_config",
]
