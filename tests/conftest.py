"""Shared fixtures: a Graph simulator served on loopback in a background thread."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from openpyxl import load_workbook

from onboard.simulator import DEFAULT_CLIENT_SECRET, Faults, SimulatorState, SimUser, serve

TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"


@dataclass
class Served:
    url: str
    ca_file: Path
    state: SimulatorState
    loop: asyncio.AbstractEventLoop  # the simulator's: `freeze` holds every answer a while

    def freeze(self, seconds: float) -> None:
        """Hold every answer (in flight or not) for `seconds`: the simulator's thread sleeps."""
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def config(self, path: Path, **sections: dict[str, Any]) -> Path:
        """Write a config.yaml pointing at this simulator as if it were a real tenant."""
        data: dict[str, Any] = {
            "graph": {"endpoint": self.url, "ca_bundle": str(self.ca_file)},
            "auth": {"tenant_id": TENANT, "client_id": CLIENT_ID, "authority": self.url},
            "pass": {"timezone": "UTC"},
            "run": {"concurrency": 4, "backoff_seconds": 0.01, "backoff_max_seconds": 0.05,
                    "settle_seconds": 0.2},
            "output": {"dir": str(path.parent / "audit")},
            "state": {"path": str(path.parent / "state" / "journal.sqlite")},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path


def read_audit(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every sheet of a workbook as rows of {header: value}: the Issued sheet by its name's
    start (a simulated run's is "Issued (SIMULATED)"), the Summary without its banner row."""
    book = load_workbook(path)
    out: dict[str, list[dict[str, Any]]] = {}
    for sheet in book.worksheets:
        rows = list(sheet.iter_rows(values_only=True))
        if rows and str(rows[0][0] or "").startswith("SIMULATED"):
            rows = rows[1:]
        name = sheet.title.split(" (")[0]
        out[name] = [dict(zip(rows[0], row, strict=False)) for row in rows[1:]] if rows else []
    return out


def issued_sheet(book: Any) -> Any:
    """The Issued sheet of a loaded workbook, whether or not the run was simulated."""
    return next(ws for ws in book.worksheets if ws.title.split(" (")[0] == "Issued")


def users(*names: str, **flags: dict[str, Any]) -> list[SimUser]:
    """Simulator users for the given UPNs; flags maps a UPN to SimUser overrides."""
    made = []
    for index, upn in enumerate(names):
        extra = flags.get(upn.split("@")[0], {})
        made.append(SimUser(f"00000000-0000-0000-0000-{index:012d}", upn, **extra))
    return made


@pytest.fixture
def serve_simulator(tmp_path: Path) -> Iterator[Any]:
    """Start a simulator for a given state in a thread; stopped at the end of the test."""
    stops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, threading.Thread]] = []

    def start(state: SimulatorState) -> Served:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def main() -> None:
            stop = asyncio.Event()
            async with serve(state, cert_dir=tmp_path / f"certs{len(stops)}") as running:
                box["served"] = Served(running.url, running.ca_file, state, loop)
                box["stop"] = stop
                ready.set()
                await stop.wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        assert ready.wait(10), "simulator did not start"
        stops.append((loop, box["stop"], thread))
        served: Served = box["served"]
        return served

    yield start
    for loop, stop, thread in stops:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The CLI configures the root logger; put it back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture(autouse=True)
def own_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Per-user state (the per-tenant locks) under the test's own folder, never ~/.local."""
    folder = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(folder))
    return folder


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("ONBOARD_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)
    return {"ONBOARD_CLIENT_SECRET": DEFAULT_CLIENT_SECRET}


__all__ = ["CLIENT_ID", "TENANT", "Faults", "Served", "SimulatorState", "users"]
