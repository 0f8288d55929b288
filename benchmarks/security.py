"""What issue 5's protections cost at 100,000 rows: the encrypted audit workbook (built in
memory) against the plain one, the redacted copy, and the reader's hostile-file checks.

    .venv/bin/python benchmarks/security.py            # 100,000 rows
    .venv/bin/python benchmarks/security.py --rows 20000

Each workbook is written in a process of its own, so peak memory is that write's alone.
Results are in benchmarks/README.md ("Security costs").
"""

from __future__ import annotations

import argparse
import json
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

START = datetime(2027, 1, 4, 8, tzinfo=UTC)
PASSWORD = "benchmark password"


def write_one(rows: int, mode: str, folder: Path) -> dict[str, float]:
    """Write one audit workbook of `rows` issued passes; time and peak memory."""
    from onboard.audit import AuditOptions, FileSummary, RunSummary, write_audit
    from onboard.outcomes import Issued, Origin, PassRequest

    issued = [
        Issued(
            PassRequest(
                Origin("hires.xlsx", n + 2), f"hire{n}@contoso.com", f"Hire {n}", START, 480, True
            ),
            secrets.token_urlsafe(12),
            f"{n:032x}",
            START,
            START,
            480,
            True,
            START,
            1,
            f"{n:036d}",
        )
        for n in range(rows)
    ]
    summary = RunSummary(
        "bench", START, START, "0", [FileSummary("hires.xlsx", "0" * 64, rows, "Sheet1")], []
    )
    options = AuditOptions(
        PASSWORD if mode in ("encrypted", "encrypted+copy") else None,
        redacted_copy=mode == "encrypted+copy",
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    path = write_audit(folder / f"{mode}.xlsx", summary, issued, [], [], options)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "peak_mb": peak / 1024,
        "rows_mb": before / 1024,
        "size_mb": path.stat().st_size / 2**20,
    }


def reader_checks(rows: int, folder: Path) -> dict[str, float]:
    """Read a rows x 14 workbook (the engine in a child process, on Linux); how much of it the
    zip and cell checks take, and the engine alone in this process for comparison."""
    from openpyxl import Workbook

    from onboard.config import InputSettings, PassSettings
    from onboard.reader import _check_cells, _check_zip, _open, read_input

    path = folder / "hires.xlsx"
    book = Workbook(write_only=True)
    sheet = book.create_sheet("New hires")
    sheet.append(
        ["Display Name", "userPrincipalName", "Start Date", *[f"Extra {i}" for i in range(11)]]
    )
    for n in range(rows):
        sheet.append(
            [
                f"Hire {n}",
                f"hire{n}@contoso.com",
                "2027-01-04",
                *[f"value {i} {n}" for i in range(11)],
            ]
        )
    book.save(path)
    data = path.read_bytes()
    started = time.perf_counter()
    read_input(path, InputSettings(max_rows=max(rows, 1)), PassSettings(), now=START)
    whole = time.perf_counter() - started
    started = time.perf_counter()
    _check_zip(data, path, 200)
    zip_check = time.perf_counter() - started
    started = time.perf_counter()
    _open(data, rows + 2)  # the spreadsheet engine in this process, as it ran before issue 5
    in_process = time.perf_counter() - started
    table = [["value"] * 14 for _ in range(rows)]
    started = time.perf_counter()
    _check_cells(table, path)
    cell_check = time.perf_counter() - started
    return {
        "read_seconds": whole,
        "zip_check_seconds": zip_check,
        "engine_in_process_seconds": in_process,
        "cell_check_seconds": cell_check,
        "file_mb": len(data) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder = args.child
        result = (
            reader_checks(args.rows, Path(folder))
            if mode == "reader"
            else write_one(args.rows, mode, Path(folder))
        )
        print(json.dumps(result))
        return
    print(f"{args.rows:,} rows (Python {sys.version.split()[0]})")
    with tempfile.TemporaryDirectory() as folder:
        for mode in ("plain", "encrypted", "encrypted+copy", "reader"):
            done = subprocess.run(
                [sys.executable, __file__, "--rows", str(args.rows), "--child", mode, folder],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout)
            print(f"{mode:>15}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
