"""onboard against the usual ways of issuing passes in bulk, on the Graph simulator.

    python benchmarks/bench.py                       # all three scenarios (about 30 minutes)
    python benchmarks/bench.py throttled --rows 1000 # one scenario, fewer rows

For every scenario and approach, a fresh simulator is started in its own process (a full
token bucket, no passes yet) with the scenario's budgets (writes: rate and burst; reads: resource units per second and
burst, as Graph budgets them apart) and latency; the approach runs in
another process, so its wall time and peak memory are its own. Wall time runs from the first
line of the approach's work (after imports) to its last: for onboard that includes reading the
spreadsheet, the journal and writing the audit workbook; the others only send requests.
429 answers are counted by the simulator, per budget. The ideal time is (N - burst) / rate on
the write budget: the burst spent at once, then exactly the allowed rate, with no 429 wasting
budget. The headline `onboard` row runs every setting at its default (pass.existing: skip,
which lists each user's pass and checks the account before the create); the SDK, sequential
and bare rows only create.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "00000000-0000-0000-0000-0000000000aa"
SECRET = "simulator-secret"
CONCURRENCY = 20  # onboard's default; the SDK script and the bare loop use the same
TAP = "authentication/temporaryAccessPassMethods"
BODY = {"isUsableOnce": True, "lifetimeInMinutes": 480}


@dataclass(frozen=True)
class Scenario:
    rows: int
    rate: float | None  # writes per second; None: no throttling
    burst: int
    latency_ms: float
    approaches: tuple[str, ...]
    # the resource-unit budget every request spends (reads: 1-2 units each), per second
    read_rate: float | None = None
    read_burst: int = 0
    # onboard's settings that differ from the defaults (and why, in benchmarks/README.md)
    onboard_run: tuple[tuple[str, Any], ...] = ()
    # fewer rows for the slow approaches, where the full count would take most of an hour
    capped: tuple[tuple[str, int], ...] = ()


ALL = ("onboard", "onboard-replace", "onboard-batch", "sequential", "msgraph-sdk", "bare-aiohttp")
SCENARIOS = {
    "throttled": Scenario(5_000, 100, 100, 50, ALL, read_rate=1_000, read_burst=1_000),
    # Graph's documented write budget for a large tenant (3,000 per 150 s) is 20/s; reads get
    # ten times that in resource units
    "graph-shaped": Scenario(1_000, 20, 300, 50, ALL, read_rate=200, read_burst=3_000),
    # Nothing throttles here, so the ceiling on onboard's rate is lifted: this scenario
    # measures the client's own cost per pass, not how it paces.
    "unthrottled": Scenario(
        100_000,
        None,
        0,
        0,
        ALL,
        onboard_run=(("max_rate", 10_000), ("max_read_rate", 100_000)),
        capped=(("sequential", 10_000), ("msgraph-sdk", 2_000)),
    ),
}


def upns(rows: int) -> list[str]:
    return [f"hire{n:06d}@contoso.com" for n in range(rows)]


# --- the parent: simulators, children, the table ---------------------------------------
def start_simulator(scenario: Scenario, work: Path) -> tuple[subprocess.Popen[str], str, str]:
    simulator: dict[str, Any] = {"tenant": None, "latency_ms": scenario.latency_ms}
    if scenario.rate is not None:
        simulator |= {"throttle_rate": scenario.rate, "throttle_burst": scenario.burst}
    if scenario.read_rate is not None:
        simulator |= {"read_rate": scenario.read_rate, "read_burst": scenario.read_burst}
    return serve_simulator(work, simulator)


def serve_simulator(
    work: Path, simulator: dict[str, Any]
) -> tuple[subprocess.Popen[str], str, str]:
    """`onboard simulate` with these simulator settings: the process, its URL and CA file."""
    config = work / "simulator.yaml"
    config.write_text(
        json.dumps({"graph": {"endpoint": "simulator"}, "simulator": simulator}), encoding="utf-8"
    )
    command = [sys.executable, "-m", "onboard", "simulate", "-c", str(config), "--port", "0",
               "--cert-dir", str(work / "certs")]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=work)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"listening on (https://\S+)", line)
    if not found:
        process.kill()
        raise SystemExit(f"the simulator did not start: {line!r}")
    return process, found.group(1), str(work / "certs" / "simulator-ca.pem")


def simulator_counts(url: str, ca: str) -> dict[str, int]:
    import requests

    http = requests.Session()
    http.trust_env = False
    answer = http.get(f"{url}/_simulator/counts", verify=ca, timeout=30)
    counts: dict[str, int] = answer.json()
    return counts


def measure(name: str, approach: str, scenario: Scenario, rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{approach}-") as tmp:
        work = Path(tmp)
        simulator, url, ca = start_simulator(scenario, work)
        try:
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    approach,
                    "--url",
                    url,
                    "--ca",
                    ca,
                    "--rows",
                    str(rows),
                    "--work",
                    str(work),
                    "--run-settings",
                    json.dumps(dict(scenario.onboard_run)),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if child.returncode != 0:
                print(child.stdout + child.stderr, file=sys.stderr)
                raise SystemExit(f"{approach} failed (exit {child.returncode})")
            result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
            counts = simulator_counts(url, ca)
        finally:
            simulator.terminate()
            simulator.wait(10)
    result |= {
        "scenario": name,
        "approach": approach,
        "rows": rows,
        "answers_429": counts.get("429", 0),
        "write_429": counts.get("429 WriteLimitExceeded", 0),
        "read_429": counts.get("429 ResourceUnitLimitExceeded", 0),
        "requests": counts.get("graph_requests", 0),
    }
    return result


def table(scenario: Scenario, results: list[dict[str, Any]]) -> str:
    lines = [
        "| approach | rows | wall time (s) | passes/s | share of the limit | requests | 429 answers "
        "(% of requests) | of them writes / resource units | failed rows | peak memory (MB) "
        "| onboard: creating only (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ideal = (r["rows"] - scenario.burst) / scenario.rate if scenario.rate else None
        share_of_limit = f"{ideal / r['wall']:.3f}" if ideal else "-"
        sending = f"{r['sending']:.2f}" if r.get("sending") else "-"
        share = 100 * r["answers_429"] / r["requests"] if r["requests"] else 0.0
        lines.append(
            f"| {r['approach']} | {r['rows']:,} | {r['wall']:.2f} | {r['passes'] / r['wall']:.1f} "
            f"| {share_of_limit} | {r['requests']:,} | {r['answers_429']} ({share:.2f}%) "
            f"| {r['write_429']} / {r['read_429']} | {r['failed']} "
            f"| {r['peak_mb']:.0f} | {sending} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument("--rows", type=int, help="rows per scenario (default: the scenario's)")
    parser.add_argument("--only", action="append", choices=ALL, help="run only this approach")
    parser.add_argument("--json", metavar="FILE", help="also write every result here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--run-settings", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(
            args.one, args.url, args.ca, args.rows, Path(args.work), json.loads(args.run_settings)
        )
        return
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(
            f"unknown scenario {', '.join(sorted(unknown))}: choose from {', '.join(SCENARIOS)}"
        )
    everything = []
    for name in args.scenarios or list(SCENARIOS):
        scenario = SCENARIOS[name]
        rows = args.rows or scenario.rows
        shape = (
            f"rate {scenario.rate:g}/s, burst {scenario.burst}"
            if scenario.rate
            else "no throttling"
        )
        print(
            f"\n### {name}: {rows:,} rows, {shape}, latency {scenario.latency_ms:g} ms", flush=True
        )
        results = []
        for approach in scenario.approaches:
            if args.only and approach not in args.only:
                continue
            n = min(rows, dict(scenario.capped).get(approach, rows))
            results.append(measure(name, approach, scenario, n))
            print(f"  {approach}: {results[-1]['wall']:.2f} s", file=sys.stderr, flush=True)
        print(table(scenario, results), flush=True)
        everything += results
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1), encoding="utf-8")


# --- the children: one approach each ---------------------------------------------------
def run_one(
    approach: str, url: str, ca: str, rows: int, work: Path, settings: dict[str, Any]
) -> None:
    users = upns(rows)
    runner = {
        "onboard": lambda: run_onboard(url, ca, users, work, settings),
        # Creates only, as the other approaches do: no listing of each user's pass first.
        "onboard-replace": lambda: run_onboard(url, ca, users, work, settings, "replace"),
        "onboard-batch": lambda: run_onboard(
            url, ca, users, work, settings | {"batch_size": 20}, "replace"
        ),
        "sequential": lambda: run_sequential(url, ca, users),
        "msgraph-sdk": lambda: run_sdk(url, ca, users),
        "bare-aiohttp": lambda: run_bare(url, ca, users),
    }[approach]
    prepared = runner()
    started = time.perf_counter()
    outcome = prepared()
    wall = time.perf_counter() - started
    extra: dict[str, Any] = {}
    if callable(outcome):  # onboard: counted from its audit, after the clock stopped
        outcome, extra = outcome()
    passes, failed = outcome
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps({"wall": wall, "passes": passes, "failed": failed, "peak_mb": peak_mb} | extra)
    )


def token(url: str, ca: str) -> str:
    import msal
    import requests

    http = requests.Session()
    http.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
    http.verify = ca
    app = msal.ConfidentialClientApplication(
        CLIENT_ID,
        client_credential=SECRET,
        authority=f"{url}/{TENANT}",
        http_client=http,
        instance_discovery=False,
    )
    found = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    return str(found["access_token"])


def run_onboard(
    url: str,
    ca: str,
    users: list[str],
    work: Path,
    settings: dict[str, Any],
    existing: str = "skip",
) -> Any:
    """The whole job, as `onboard run hires.xlsx` does it: default settings but `settings` (run.*)
    and `existing` (pass.existing; the default, skip, lists each user's pass before creating)."""
    from openpyxl import Workbook, load_workbook

    from onboard.cli import main as onboard

    start = (date.today() + timedelta(days=30)).isoformat()
    book = Workbook(write_only=True)
    sheet = book.create_sheet("New hires")
    sheet.append(["Display Name", "userPrincipalName", "Start Date"])
    for n, upn in enumerate(users):
        sheet.append([f"Hire {n}", upn, start])
    hires = work / "hires.xlsx"
    book.save(hires)
    config = work / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "graph": {"endpoint": url, "ca_bundle": ca},
                "auth": {"tenant_id": TENANT, "client_id": CLIENT_ID, "authority": url},
                "run": settings,
                "pass": {"existing": existing, "timezone": "UTC"},
                "output": {"dir": str(work / "audit")},
                "state": {"path": str(work / "state" / "journal.sqlite")},
            }
        ),
        encoding="utf-8",
    )
    os.environ["ONBOARD_CLIENT_SECRET"] = SECRET

    def go() -> Any:
        code = onboard(["run", str(hires), "-c", str(config)])
        if code not in (0, 1):
            raise SystemExit(f"onboard exited {code}")
        return count  # read the audit after the clock has stopped

    def count() -> tuple[tuple[int, int], dict[str, Any]]:
        (audit,) = (work / "audit").glob("onboard-*.xlsx")
        book = load_workbook(audit, read_only=True)
        # a simulator's passes are in "Issued (SIMULATED)": the run knows where it issued them
        sheets = {name.split(" (")[0]: book[name] for name in book.sheetnames}
        issued, failed = (
            sum(1 for _ in sheets[name].iter_rows(min_row=2)) for name in ("Issued", "Failed")
        )
        summary = {r[0]: r[1] for r in sheets["Summary"].iter_rows(values_only=True) if len(r) > 1}
        # writes / effective write rate = the time from the first create to the last answer
        rate = float(str(summary["Effective write rate"]).split()[0])
        return (issued, failed), {"sending": int(summary["Writes to Graph"]) / rate}

    return go


def run_sequential(url: str, ca: str, users: list[str]) -> Any:
    """One request at a time, as the usual PowerShell loop: a 429 waits its Retry-After and
    tries again, up to 3 times (Microsoft Graph PowerShell's default); anything else fails."""
    import requests

    def go() -> tuple[int, int]:
        http = requests.Session()
        http.trust_env = False
        http.verify = ca
        http.headers["Authorization"] = f"Bearer {token(url, ca)}"
        issued = failed = 0
        for upn in users:
            for _attempt in range(4):
                answer = http.post(f"{url}/v1.0/users/{upn}/{TAP}", json=BODY, timeout=60)
                if answer.status_code != 429:
                    break
                time.sleep(float(answer.headers.get("Retry-After", "3")))
            if answer.status_code == 201:
                issued += 1
            else:
                failed += 1
        return issued, failed

    return go


def run_sdk(url: str, ca: str, users: list[str]) -> Any:
    """msgraph-sdk with its default middleware (retry handler included), gather + semaphore."""
    import httpx
    from kiota_abstractions.authentication import (
        AccessTokenProvider,
        AllowedHostsValidator,
        BaseBearerTokenAuthenticationProvider,
    )
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph.generated.models.temporary_access_pass_authentication_method import (
        TemporaryAccessPassAuthenticationMethod,
    )
    from msgraph_core import GraphClientFactory

    class Tokens(AccessTokenProvider):
        def __init__(self) -> None:
            self.value: str | None = None

        async def get_authorization_token(self, uri: str, context: Any = None) -> str:
            if self.value is None:
                self.value = await asyncio.to_thread(token, url, ca)
            return self.value

        def get_allowed_hosts_validator(self) -> AllowedHostsValidator:
            return AllowedHostsValidator([])

    async def go() -> tuple[int, int]:
        http = GraphClientFactory.create_with_default_middleware(
            client=httpx.AsyncClient(base_url=f"{url}/v1.0", verify=ca, timeout=60)
        )
        adapter = GraphRequestAdapter(BaseBearerTokenAuthenticationProvider(Tokens()), client=http)
        client = GraphServiceClient(request_adapter=adapter)
        slots = asyncio.Semaphore(CONCURRENCY)
        issued = failed = 0

        async def one(upn: str) -> None:
            nonlocal issued, failed
            body = TemporaryAccessPassAuthenticationMethod(
                lifetime_in_minutes=480, is_usable_once=True
            )
            async with slots:
                try:
                    methods = client.users.by_user_id(upn).authentication
                    await methods.temporary_access_pass_methods.post(body)
                    issued += 1
                except Exception as exc:  # an admin's script counts it and goes on
                    if not failed:
                        print(f"first failure: {exc!r}"[-900:], file=sys.stderr)
                    failed += 1

        await asyncio.gather(*(one(upn) for upn in users))
        await http.aclose()
        return issued, failed

    return lambda: asyncio.run(go())


def run_bare(url: str, ca: str, users: list[str]) -> Any:
    """aiohttp, a semaphore, nothing else: no retries, no journal, no audit."""
    import ssl

    import aiohttp

    async def go() -> tuple[int, int]:
        secret = token(url, ca)
        context = ssl.create_default_context(cafile=ca)
        connector = aiohttp.TCPConnector(ssl=context, limit=CONCURRENCY)
        headers = {"Authorization": f"Bearer {secret}"}
        issued = failed = 0
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            slots = asyncio.Semaphore(CONCURRENCY)

            async def one(upn: str) -> None:
                nonlocal issued, failed
                async with slots, session.post(f"{url}/v1.0/users/{upn}/{TAP}", json=BODY) as r:
                    await r.read()
                    if r.status == 201:
                        issued += 1
                    else:
                        failed += 1

            await asyncio.gather(*(one(upn) for upn in users))
        return issued, failed

    return lambda: asyncio.run(go())


if __name__ == "__main__":
    main()
