"""Regenerate the sample new-hire sheet, its CSV twin, and the simulator's sample tenant.

    python samples/make_samples.py            all three
    python samples/make_samples.py tenant     the tenant alone (the sheets' bytes stay)

Deterministic: running it again gives the same rows. Four rows are meant to fail (an unknown
user, a lifetime the policy refuses, an unreadable date, a user outside the pass policy) and
one repeats an earlier row, so the demo shows every kind of outcome.
"""

from __future__ import annotations

import csv
import random
from datetime import date, timedelta
from pathlib import Path

import yaml
from openpyxl import Workbook
from openpyxl.styles import Font

from onboard.simulator import DEFAULT_POLICY

HERE = Path(__file__).resolve().parent
DOMAIN = "contoso.com"
FIRST = [
    "Amara", "Ben", "Chloe", "Dmitri", "Elena", "Farah", "George", "Hana", "Ivan", "Julia",
    "Kofi", "Lena", "Mateo", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samir", "Tara",
    "Umar", "Vera", "Wei", "Ximena", "Yusuf", "Zoe", "Aisha", "Bruno", "Carmen", "Deepak",
    "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas", "Keiko", "Liam", "Maya", "Nikolai",
    "Olivia", "Pedro", "Rania", "Sven", "Thandi", "Uma", "Victor", "Wen", "Yara", "Zain",
    "Aoife", "Bjorn",
]
LAST = [
    "Okafor", "Hughes", "Martin", "Volkov", "Rossi", "Haddad", "Clarke", "Sato", "Petrov",
    "Schmidt", "Mensah", "Berg", "Garcia", "Karimi", "Lindqvist", "Nair", "Dubois", "Alvarez",
    "Aziz", "Walsh", "Farouk", "Novak", "Zhang", "Torres", "Demir", "Evans", "Bello", "Costa",
    "Ruiz", "Patel", "Wilson", "Weber", "Kim", "Lefevre", "Moreira", "Falk", "Tanaka", "Byrne",
    "Cohen", "Ivanov", "Brown", "Santos", "Saleh", "Larsen", "Dlamini", "Rao", "Moreau", "Li",
    "Haddad", "Malik", "Murphy", "Nilsen",
]
DEPARTMENTS = ["Engineering", "Finance", "Sales", "Support", "Marketing", "People", "Legal"]
MANAGERS = {
    "Engineering": "Ruth Adeyemi", "Finance": "Tom Becker", "Sales": "Lucia Ferreira",
    "Support": "Arjun Mehta", "Marketing": "Claire Dupont", "People": "Sara Lind",
    "Legal": "Michael O'Neill",
}
# The managers' accounts: each hire's manager in the directory, so delivery by mail
# (delivery.method: mail) has someone to mail. Michael O'Neill has no mailbox: the Legal
# hires' passes are mailed to nobody, and the audit says why.
MANAGER_UPNS = {
    "Ruth Adeyemi": "ruth.adeyemi", "Tom Becker": "tom.becker", "Lucia Ferreira": "lucia.ferreira",
    "Arjun Mehta": "arjun.mehta", "Claire Dupont": "claire.dupont", "Sara Lind": "sara.lind",
    "Michael O'Neill": "michael.oneill",
}
NO_MAILBOX = {"Michael O'Neill"}
SENDER = "onboarding"  # the mailbox the demo's delivery sends from (delivery.sender)
# The group the sample tenant's pass policy excludes: Pat Contractor is in it, so Graph creates
# Pat a pass that cannot be used (DisabledByPolicy), and the row fails.
CONTRACTORS_GROUP = "5b3f2c9e-8d41-4f6a-9c2e-7a1d0e4b6c38"
HEADERS = [
    "Display Name", "Work Email", "Start Date", "Department", "Manager", "Lifetime (minutes)",
    "One-time",
]


def build_rows() -> list[list[object]]:
    rng = random.Random(2027)
    mondays = [date(2027, 1, 4) + timedelta(weeks=w) for w in range(4)]
    rows: list[list[object]] = []
    for first, last in zip(FIRST, LAST, strict=True):
        department = rng.choice(DEPARTMENTS)
        email = f"{first.lower()}.{last.lower()}@{DOMAIN}"
        rows.append([
            f"{first} {last}", email, rng.choice(mondays), department, MANAGERS[department],
            None, None,
        ])
    rows[7][5] = 240  # shorter lifetime: allowed by the policy (60..480)
    rows[12][6] = "no"  # a multi-use pass: allowed, the policy is not one-time-only
    rows[20][5] = 1440  # FAILS: the policy's maximum is 480 minutes
    rows[30][2] = "next Monday"  # FAILS: not a date
    rows.append(["Jon Smithe", f"jon.smithe@{DOMAIN}", mondays[0], "Sales",
                 MANAGERS["Sales"], None, None])  # FAILS: no such user in the tenant
    rows.append(["Pat Contractor", f"pat.contractor@{DOMAIN}", mondays[1], "Support",
                 MANAGERS["Support"], None, None])  # FAILS: outside the pass policy's groups
    rows.append(list(rows[3]))  # SKIPPED: the same person twice, identical row
    return rows


def write_xlsx(rows: list[list[object]], path: Path) -> None:
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "New hires"
    sheet.append(HEADERS)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in rows:
        sheet.append(row)
    for row in sheet.iter_rows(min_row=2, min_col=3, max_col=3):
        row[0].number_format = "yyyy-mm-dd"
    for letter, width in zip("ABCDEFG", (22, 34, 12, 14, 18, 18, 10), strict=True):
        sheet.column_dimensions[letter].width = width
    workbook.save(path)


def write_csv(rows: list[list[object]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADERS)
        for row in rows:
            writer.writerow(["" if v is None else v.isoformat() if isinstance(v, date) else v
                             for v in row])


def write_tenant(rows: list[list[object]], path: Path) -> None:
    users = []
    seen = set()
    for row in rows:
        name, email = str(row[0]), str(row[1])
        if email in seen or email.startswith("jon.smithe"):
            continue
        seen.add(email)
        user: dict[str, object] = {
            "userPrincipalName": email,
            "displayName": name,
            "mail": email,  # so input.match_by: mail finds them too
            "employeeId": f"E{1001 + len(users)}",
        }
        if email.startswith("pat.contractor"):
            user["groups"] = [CONTRACTORS_GROUP]
            user["sponsors"] = [f"{MANAGER_UPNS[str(row[4])]}@{DOMAIN}"]
        user["manager"] = f"{MANAGER_UPNS[str(row[4])]}@{DOMAIN}"
        users.append(user)
    for name, upn in MANAGER_UPNS.items():
        manager: dict[str, object] = {"userPrincipalName": f"{upn}@{DOMAIN}", "displayName": name}
        if name not in NO_MAILBOX:
            manager["mail"] = f"{upn}@{DOMAIN}"
        users.append(manager)
    users.append({"userPrincipalName": f"{SENDER}@{DOMAIN}", "displayName": "Onboarding",
                  "mail": f"{SENDER}@{DOMAIN}"})
    tenant = {
        # The simulator's default policy: the portal's defaults, lifetimes 60..480 minutes,
        # for all users but the contractors group.
        "policy": {
            **DEFAULT_POLICY,
            "excludeTargets": [{"targetType": "group", "id": CONTRACTORS_GROUP}],
        },
        "users": users,
    }
    header = (
        "# The simulator's sample tenant: its users and its Temporary Access Pass policy.\n"
        "# Regenerate with: python samples/make_samples.py\n"
    )
    path.write_text(header + yaml.safe_dump(tenant, sort_keys=False), encoding="utf-8")


if __name__ == "__main__":
    import sys

    sample_rows = build_rows()
    write_tenant(sample_rows, HERE / "tenant.yaml")
    if sys.argv[1:] != ["tenant"]:
        write_xlsx(sample_rows, HERE / "new_hires.xlsx")
        write_csv(sample_rows, HERE / "new_hires.csv")
        print(f"wrote {len(sample_rows)} rows to samples/new_hires.xlsx and samples/new_hires.csv")
