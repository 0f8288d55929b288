"""How fast `onboard revoke` takes a run's passes back, against the write budget that paces it.

    .venv/bin/python benchmarks/revoke.py                 # 1,000 passes, 100 writes/s, burst 100
    .venv/bin/python benchmarks/revoke.py --passes 300 --rate 20 --burst 50

A simulator is served in a process of its own (`onboard simulate`) with a write budget, a
resource-unit budget and latency (the `throttled` scenario of bench.py). `onboard run` first
issues the passes (outside the clock); once the write budget has refilled, `onboard revoke
RUN_ID --yes` runs in another process, timed from its start (after imports) to its end: signing
in, the journal, a look at each pass (a read) and its DELETE (a write), the revoke workbook.
The ideal time is (passes - burst) / rate: the burst spent at once, then exactly the allowed
rate of writes. Results are in benchmarks/README.md ("Issue 18").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

# the simulator and its demo tenant, as bench.py (beside this file) starts them
from bench import CLIENT_ID, SECRET, TENANT, serve_simulator, simulator_counts

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.1  # the bound on the ratio to the ideal time


def simulate(work: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[str], str, str]:
    """`onboard simulate` with the budgets asked for: the process, its URL and CA file."""
    simulator = {
        "tenant": None,
        "latency_ms": args.latency_ms,
        "throttle_rate": args.rate,
        "throttle_burst": args.burst,
        "read_rate": args.read_rate,
        "read_burst": args.read_burst,
    }
    return serve_simulator(work, simulator)


def onboard(work: Path, *args: str) -> dict[str, Any]:
    """`onboard ARGS --json` in a process of its own, timed inside it: its JSON, wall, peak."""
    child = subprocess.run(
        [sys.executable, __file__, "--one", str(work), "--", *args],
        capture_output=True, text=True, check=False, cwd=work,
        env={**os.environ, "ONBOARD_CLIENT_SECRET": SECRET, "XDG_STATE_HOME": str(work / "xdg")},
    )  # fmt: skip
    if not child.stdout.strip():
        raise SystemExit(f"onboard {args[0]} failed (exit {child.returncode}): {child.stderr}")
    said: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    if said["code"] not in (0, 1):
        raise SystemExit(f"onboard {args[0]} exited {said['code']}: {child.stderr[-2000:]}")
    return said


def one(work: Path, args: list[str]) -> None:
    """The child: main(args + --json) with stdout captured; prints one line of JSON."""
    import contextlib
    import io

    from onboard import lifecycle
    from onboard.cli import main

    kept: list[Any] = []
    revoke = lifecycle.revoke

    async def keeping(*given: Any, **options: Any) -> Any:
        """lifecycle.revoke, its report kept to read its pacing once the clock has stopped."""
        kept.append(await revoke(*given, **options))
        return kept[-1]

    lifecycle.revoke = keeping  # type: ignore[assignment]
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main([*args, "-c", str(work / "config.yaml"), "--json"])
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    deleting = None
    if kept and kept[0].pacing is not None:
        writes = kept[0].pacing.writes  # from the first DELETE sent to the last answer
        deleting = writes.requests / writes.effective_rate if writes.effective_rate else None
    said = {"code": code, "wall": wall, "peak_mb": peak, "deleting": deleting}
    print(json.dumps(said | {"out": json.loads(out.getvalue())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=100.0, help="writes per second")
    parser.add_argument("--burst", type=int, default=100, help="writes at once")
    parser.add_argument("--read-rate", type=float, default=1_000.0, help="resource units/s")
    parser.add_argument("--read-burst", type=int, default=1_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(Path(args.one), args.rest)
        return
    with tempfile.TemporaryDirectory(prefix="bench-revoke-") as tmp:
        work = Path(tmp)
        simulator, url, ca = simulate(work, args)
        try:
            measure(work, url, ca, args)
        finally:
            simulator.terminate()
            simulator.wait(10)


def measure(work: Path, url: str, ca: str, args: argparse.Namespace) -> None:
    start = (date.today() + timedelta(days=30)).isoformat()
    sheet = work / "hires.csv"
    sheet.write_text(
        "UPN,Start Date\n" + "".join(f"hire{n:06d}@contoso.com,{start}\n"
                                     for n in range(args.passes)), encoding="utf-8",
    )  # fmt: skip
    (work / "config.yaml").write_text(
        json.dumps({
            "graph": {"endpoint": url, "ca_bundle": ca},
            "auth": {"tenant_id": TENANT, "client_id": CLIENT_ID, "authority": url},
            "pass": {"existing": "replace", "timezone": "UTC"},
            "output": {"dir": str(work / "audit")},
            "state": {"path": str(work / "state" / "journal.sqlite")},
        }),
        encoding="utf-8",
    )  # fmt: skip
    issued = onboard(work, "run", str(sheet))
    run_id = issued["out"]["run_id"]
    print(f"issued {issued['out']['counts']['issued']:,} passes in {issued['wall']:.2f} s "
          f"(run {run_id}); letting the write budget refill", file=sys.stderr)  # fmt: skip
    time.sleep(args.burst / args.rate + 1.0)  # a full bucket, as the ideal assumes
    before = simulator_counts(url, ca)
    revoked = onboard(work, "revoke", run_id, "--yes")
    after = simulator_counts(url, ca)
    done = revoked["out"]["counts"]
    ideal = (args.passes - args.burst) / args.rate
    throttled = after.get("429", 0) - before.get("429", 0)
    requests = after.get("graph_requests", 0) - before.get("graph_requests", 0)
    deleted = after.get("deleted", 0) - before.get("deleted", 0)
    ratio = revoked["wall"] / ideal
    print(
        "| passes | write budget | latency | wall time (s) | ideal (s) | ratio to ideal | "
        "deleting only (s) | deleted | 429 answers (% of requests) | peak MB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.passes:,} | {args.rate:g}/s, burst {args.burst} | {args.latency_ms:g} ms "
        f"| {revoked['wall']:.2f} | {ideal:.2f} | {ratio:.3f} | {revoked['deleting']:.2f} "
        f"| {deleted:,} "
        f"| {throttled} ({100 * throttled / max(requests, 1):.2f}%) | {revoked['peak_mb']:.0f} |"
    )
    print(f"actions: {done}; target: within {TARGET}x of the ideal: "
          f"{'met' if ratio <= TARGET else 'NOT met'}", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
