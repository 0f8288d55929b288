"""What a setting's value must mean, beyond its kind: a tenant, a client id, a time zone, an
https:// address, a CA file. Each check returns the problem in words (None when there is
none), so the settings models, `onboard init`'s questions and its options share them."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..files import NotAFile, read_small

CERTIFICATE_FILE_LIMIT = 10 * 1024 * 1024  # a CA bundle or certificate bigger is not one
EXAMPLE_TIMEZONE = "Europe/London"  # suggested when this machine's own zone cannot be told
_UNSAFE_TENANTS = {"common", "organizations", "consumers"}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def tenant_problem(tenant: str) -> str | None:
    """Why `tenant` cannot be auth.tenant_id (None if it can): a GUID or a domain name."""
    if tenant.lower() in _UNSAFE_TENANTS:
        return f"must be your tenant's id or domain, not '{tenant}'"
    if not (_GUID.match(tenant) or _DOMAIN.match(tenant)):
        return f"{tenant!r} is neither a GUID nor a domain name"
    return None


def client_id_problem(client: str) -> str | None:
    """Why `client` cannot be an app registration's client id (None if it can)."""
    if not _GUID.match(client):
        return f"{client!r} is not a GUID (the app's Application (client) ID)"
    return None


def timezone_problem(zone: str) -> str | None:
    """Why `zone` cannot be pass.timezone (None if it can): an IANA name this machine knows."""
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"{zone!r} is not an IANA time zone (e.g. {EXAMPLE_TIMEZONE})"
    return None


def machine_zone(environ: Mapping[str, str], etc: Path = Path("/etc")) -> str | None:
    """This machine's IANA time zone, to suggest (never to use unasked): from TZ,
    /etc/timezone, or the zone file /etc/localtime links to. None when none of them tells."""
    found: list[str] = []
    tz = environ.get("TZ", "").lstrip(":")  # ":Europe/Paris" and a zone file's path mean it too
    if tz:
        found.append(tz.rpartition("zoneinfo/")[2])
    with contextlib.suppress(OSError, UnicodeDecodeError):
        found.append((etc / "timezone").read_text(encoding="utf-8").strip())
    with contextlib.suppress(OSError):  # not a link (a copy of the zone file), or absent
        found.append(os.readlink(etc / "localtime").rpartition("zoneinfo/")[2])
    return next((zone for zone in found if zone and timezone_problem(zone) is None), None)


def normal_url(url: str) -> str:
    """One spelling per address: scheme and host in lower case, no default port, no trailing
    slash. The journal records a run's Graph root by it, so HTTPS://Graph.Microsoft.com:443/
    is the same Graph as https://graph.microsoft.com."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    default = {"https": 443, "http": 80}.get(parts.scheme.lower())
    port = "" if parts.port in (None, default) else f":{parts.port}"
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{host}{port}{path}"


def https_problem(url: str) -> str | None:
    """https:// only, so tokens and passes never cross a network in clear; plain http:// only
    to this machine (a local simulator or test double)."""
    parts = urlsplit(url)
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return None
    if parts.scheme != "https" or not parts.hostname:
        return (
            "must be an https:// URL (http:// only to this machine: localhost, 127.0.0.1 or "
            f"::1), got {url!r}"
        )
    return None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ca_bundle_problem(path: Path) -> str | None:
    """Why `path` cannot be graph.ca_bundle (None if it can): a readable file of PEM
    certificates, checked before any connection."""
    if not path.exists():
        return f"{path} does not exist"
    try:
        read_small(path, CERTIFICATE_FILE_LIMIT)
    except (NotAFile, OSError) as exc:
        why = str(exc) if isinstance(exc, NotAFile) else exc.strerror
        return f"{path}: cannot be used: it {why}"
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except (ssl.SSLError, ValueError, OSError):
        return (
            f"{path} holds no PEM certificate (export the proxy's CA certificate as Base-64 / PEM)"
        )
    return None
