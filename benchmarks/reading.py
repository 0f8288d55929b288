"""How long onboard takes to read HR's messy exports at 100,000 rows: a semicolon CSV and a
workbook, each with a title row, a blank row, day-first text dates and a totals row below.

    .venv/bin/python benchmarks/reading.py            # 100,000 rows
    .venv/bin/python benchmarks/reading.py --rows 20000

Each file is read in a process of its own (`reader.read_all`, as `onboard run` reads it), so the
peak memory is the read's alone. Results are in benchmarks/README.md ("Issue 6").
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from onboard.reader import read_all


def read_files(config, paths, now):  # type: ignore[no-untyped-def]
    """The input files as `onboard run` reads them."""
    return read_all(paths, config.input, config.pass_, now)


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NOW = datetime(2026, 11, 28, tzinfo=UTC)
HEADER = ["Display Name", "userPrincipalName", "Start Date", "Lifetime"]


def make(kind: str, rows: int, path: Path) -> None:
    people: list[list[object]] = [
        [f"Hire {n}", f"hire{n:06d}@contoso.com", "07/12/2026", 480] for n in range(rows)
    ]
    top: list[list[object]] = [["New hires, December 2026 (title row)"], []]
    bottom: list[list[object]] = [[], ["Total:", rows]]
    if kind == "csv":
        lines = [";".join(str(v) for v in row) for row in [*top, HEADER, *people, *bottom]]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
        return
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("New hires")
    for row in [*top, HEADER, *people, *bottom]:
        sheet.append(row)
    book.save(path)


def read_one(path: Path) -> dict[str, float]:
    from onboard.config import load_config

    config = load_config(None)
    config = config.model_copy(
        update={"input": config.input.model_copy(update={"date_order": "DMY"})}
    )
    started = time.perf_counter()
    (read,) = read_files(config, [path], NOW)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "requests": len(read.requests), "skipped": len(read.skipped),
            "failed": len(read.failed), "header_row": read.header_row, "peak_mb": peak}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(read_one(Path(args.one))))
        return
    print("| file | rows | read (s) | requests | skipped | header row | peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-reading-") as tmp:
        for kind in ("csv", "xlsx"):
            path = Path(tmp) / f"hires.{kind}"
            make(kind, args.rows, path)
            child = subprocess.run(
                [sys.executable, __file__, "--one", str(path)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            r = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"| {kind} | {args.rows:,} | {r['seconds']:.2f} | {r['requests']:,} | "
                  f"{r['skipped']} | {r['header_row']} | {r['peak_mb']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
