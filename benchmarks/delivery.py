"""Delivery by mail: 1,000 hires under 100 managers, against Exchange's 30-a-minute ideal.

    python benchmarks/delivery.py                 # Exchange's limits: about 3.5 minutes
    python benchmarks/delivery.py --rate 600      # the quick run: 600 a minute, both sides

One `onboard run` of the whole job (read the sheet, issue 1,000 passes, find each hire's
manager, send one message per manager, write the audit) against the built-in simulator, whose
tenant gives the hires 100 managers (10 each) and whose sendMail keeps Exchange's limits per
mailbox: RATE messages a minute (30 by default, as Exchange Online) and 4 requests at once,
429 ApplicationThrottled beyond them. onboard is set to the same RATE (delivery.max_per_minute).

The ideal is the limit itself: the first message at once, then one every 60/RATE seconds, so
(messages - 1) x 60 / RATE. Delivery time is read from the audit workbook: from the first
message Graph accepted to the last (Delivered at); the rest of the wall time is issuing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from openpyxl import load_workbook

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "contoso.com"
SENDER = f"onboarding@{DOMAIN}"
EXCHANGE_PER_MINUTE = 30  # Exchange Online's limit per mailbox (onboard.rate has it too)


def tenant(hires: int, managers: int) -> dict[str, Any]:
    """Hires spread evenly over managers, every manager with a mailbox, and the sender."""
    users: list[dict[str, Any]] = [
        {
            "userPrincipalName": f"hire{n:05d}@{DOMAIN}",
            "manager": f"boss{n % managers:03d}@{DOMAIN}",
        }
        for n in range(hires)
    ]
    users += [
        {"userPrincipalName": f"boss{n:03d}@{DOMAIN}", "displayName": f"Boss {n}",
         "mail": f"boss{n:03d}@{DOMAIN}"}
        for n in range(managers)
    ]  # fmt: skip
    users.append({"userPrincipalName": SENDER, "mail": SENDER})
    return {"users": users}


def run(hires: int, managers: int, rate: float, work: Path) -> dict[str, Any]:
    start = (date.today() + timedelta(days=7)).isoformat()
    sheet = work / "hires.csv"
    sheet.write_text(
        "UPN,Start Date\n" + "".join(f"hire{n:05d}@{DOMAIN},{start}\n" for n in range(hires)),
        encoding="utf-8",
    )
    (work / "tenant.json").write_text(json.dumps(tenant(hires, managers)), encoding="utf-8")
    config = {
        "graph": {"endpoint": "simulator"},
        "auth": {"tenant_id": "contoso.onmicrosoft.com"},
        "pass": {"timezone": "UTC"},
        "output": {"dir": str(work / "audit")},
        "state": {"path": str(work / "journal.sqlite")},
        "delivery": {"method": "mail", "sender": SENDER, "max_per_minute": rate},
        "simulator": {
            "tenant": str(work / "tenant.json"),
            "mail_per_minute": int(rate),
            "mail_dir": str(work / "mail"),
        },
    }
    (work / "config.yaml").write_text(json.dumps(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONBOARD_")}
    env["PYTHONPATH"] = str(ROOT)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "onboard", "run", str(sheet), "-c", str(work / "config.yaml")],
        cwd=work, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"onboard run exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    audit = next((work / "audit").glob("*.xlsx"))
    book = load_workbook(audit, read_only=True)
    lines = book["Summary"].iter_rows(min_row=3, values_only=True)  # past the banner, header
    summary = {row[0]: row[1] for row in lines if len(row) > 1}
    issued = next(ws for ws in book.worksheets if ws.title.startswith("Issued"))
    rows = issued.iter_rows(values_only=True)
    header = list(next(rows))
    at = header.index("Delivered at")
    sent_at = sorted({r[at] for r in rows if r[at] is not None})
    delivering = (sent_at[-1] - sent_at[0]).total_seconds() if len(sent_at) > 1 else 0.0
    messages = int(summary["Messages sent"])
    ideal = (messages - 1) * 60 / rate
    return {
        "hires": hires,
        "managers": managers,
        "rate": rate,
        "messages": messages,
        "mail files": len(list((work / "mail").glob("*.eml"))),
        "wall": wall,
        "delivering": delivering,
        "ideal": ideal,
        "ratio": delivering / ideal if ideal else float("nan"),
        "429": summary["429 answers to sendMail"],
        "paused": summary["Time paused by Retry-After (mail)"],
        "issuing": wall - delivering,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hires", type=int, default=1_000)
    parser.add_argument("--managers", type=int, default=100)
    parser.add_argument(
        "--rate",
        type=float,
        default=EXCHANGE_PER_MINUTE,
        help="messages a minute, the simulator's limit and onboard's pace (default 30)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onboard-delivery-") as folder:
        r = run(args.hires, args.managers, args.rate, Path(folder))
    print(
        "| hires | managers | limit (msg/min) | messages sent | wall time (s) | delivering (s) "
        "| ideal (s) | ratio to ideal | 429s to sendMail | paused by Retry-After (s) | issuing "
        "and the rest (s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {r['hires']:,} | {r['managers']} | {r['rate']:g} | {r['messages']} | "
        f"{r['wall']:.1f} | {r['delivering']:.1f} | {r['ideal']:.1f} | {r['ratio']:.3f} | "
        f"{r['429']} | {r['paused']} | {r['issuing']:.1f} |"
    )
    if r["mail files"] != r["messages"]:
        raise SystemExit(f"the simulator accepted {r['mail files']} messages, not {r['messages']}")


if __name__ == "__main__":
    main()
