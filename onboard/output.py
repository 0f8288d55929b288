"""`--json`: each command's result as one JSON value, built from its typed result (RunReport,
Validation, RunInfo, StatusReport, RevokeReport), one function per command. The CLI prints it.

Never a pass value: the records that hold one (Issued) give only who, the method id and the
pass's times. Times are ISO 8601 in UTC; categories are their enum's value (a state, an
action) or, for a failure's reason, a stable name (`user_not_found`) beside its label.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .journal import RunInfo, RunStatus
from .lifecycle import PassStatus, RevokeReport, StatusReport
from .outcomes import Failed, Issued, Skipped
from .report import RunReport
from .tenant import Tenant
from .validation import Validation

JSON = dict[str, Any]


def run_json(report: RunReport) -> JSON:
    """`onboard run --json`: the run, its counts, its audit workbook, and its rows' outcomes."""
    return {
        "run_id": report.run_id,
        "status": str(report.status),
        "stopped": str(report.stopped) if report.stopped else None,
        "simulated": report.simulated,
        "resumed": report.resumed,
        "tenant": _tenant(report.tenant),
        "rows": report.rows,
        "counts": {
            "issued": len(report.issued),
            "failed": len(report.failures),
            "skipped": len(report.skipped) - len(report.held_elsewhere),
            "held_elsewhere": len(report.held_elsewhere),
            "not_sent": len(report.not_sent),
            "not_yet_due": report.not_yet_due,
        },
        "audit_path": _path(report.audit_path),
        "attention": list(report.attention),
        "issued": [_issued(i) for i in report.issued],
        "failed": [_failed(f) for f in report.failed],
        "skipped": [_skipped(s) for s in report.skipped],
    }


def validate_json(found: Validation, workbook: Path, *, online: bool) -> JSON:
    """`onboard validate --json`: the files read, the rows ready, every problem and skip."""
    return {
        "ok": not found.problems and not found.attention,
        "online": online,
        "simulated": found.tenant is not None and found.tenant.simulated,
        "tenant": _tenant(found.tenant),
        "files": [
            {
                "path": str(f.path),
                "rows": f.row_count,
                "sheet": f.sheet,
                "header_row": f.header_row,
            }
            for f in found.files
        ],
        "ready": len(found.ready),
        "problems": [_failed(f) for f in found.problems],
        "skipped": [_skipped(s) for s in found.skipped],
        "policy": found.policy,
        "journal": found.journal,
        "checks": [{"item": item, "result": said} for item, said in found.checks],
        "attention": list(found.attention),
        "workbook": str(workbook),
    }


def runs_json(runs: Sequence[RunInfo], *, live: bool) -> list[JSON]:
    """`onboard runs --json`: each run of the journal, oldest first. `live`: a run is going
    on now (one marked running is that one; otherwise it stopped early)."""
    return [
        {
            "run_id": r.run_id,
            "started": _time(r.started),
            "finished": _time(r.finished),
            "status": str(r.status),
            "running_now": r.status is RunStatus.RUNNING and live,
            "tenant_id": r.tenant.partition(" ")[0] if r.tenant else None,
            "tenant": r.tenant_shown,
            "simulated": r.simulated,
            "counts": {
                "issued": r.counts.get("issued", 0) + r.counts.get("unclear", 0),
                "failed": r.counts.get("failed", 0),
                "skipped": r.counts.get("skipped", 0),
                "held_elsewhere": r.counts.get("held", 0),
                "not_sent": r.counts.get("not_sent", 0),
                "in_flight": r.counts.get("in_flight", 0) + r.counts.get("interrupted", 0),
                "revoked": r.revoked,
            },
            "audit_path": r.audit_path or None,
        }
        for r in runs
    ]


def report_json(run: RunInfo, workbook: Path, *, pass_values: bool) -> JSON:
    """`onboard report --json`: the workbook rebuilt, and whether it holds pass values."""
    return {
        "run_id": run.run_id,
        "status": str(run.status),
        "workbook": str(workbook),
        "pass_values": pass_values,
        "tenant": run.tenant_shown,
        "simulated": run.simulated,
    }


def status_json(report: StatusReport) -> list[JSON]:
    """`onboard status --json`: one object per pass the run issued."""
    return [_pass_status(report, p) for p in report.passes]


def _pass_status(report: StatusReport, p: PassStatus) -> JSON:
    r = p.recorded
    return {
        "run_id": report.run.run_id,
        "source": r.origin.source,
        "row": r.origin.row,
        "user": r.user,
        "state": str(p.state) if p.state is not None else None,
        "registered": list(p.registered) if p.registered is not None else None,
        "needs_attention": p.needs_attention,
        "hire_starts": _time(r.hire_starts),
        "pass_starts": _time(r.starts),
        "expires": _time(r.expires),
        "method_id": r.method_id,
        "disabled_by_policy": p.disabled_by_policy,
        "replaced_by": p.replaced_by,
        "revoked": p.revoked,
        "error": p.error,
        "simulated": report.simulated,
    }


def revoke_json(report: RevokeReport) -> JSON:
    """`onboard revoke --json`: what became of each pass, the counts, the workbook."""
    return {
        "run_id": report.run.run_id,
        "revoke_id": report.revoke_id,
        "dry_run": report.dry_run,
        "unused": report.unused,
        "simulated": report.simulated,
        "tenant": _tenant(report.tenant),
        "stopped": report.stopped,
        "declined": report.declined,
        "counts": report.counts(),
        "passes": [
            {
                "source": r.recorded.origin.source,
                "row": r.recorded.origin.row,
                "user": r.user,
                "method_id": r.recorded.method_id,
                "action": str(r.action),
                "state": str(r.state) if r.state is not None else None,
                "detail": r.detail,
            }
            for r in report.revocations
        ],
        "workbook": _path(report.workbook),
    }


def error_json(code: int, message: str) -> JSON:
    """What a command that stopped prints as its one JSON value: its exit code and why."""
    return {"error": {"exit_code": code, "message": message}}


def _issued(i: Issued) -> JSON:
    return {
        "source": i.origin.source,
        "row": i.origin.row,
        "user": i.request.user,
        "method_id": i.method_id,
        "starts": _time(i.starts),
        "expires": _time(i.expires),
        "usable_once": i.usable_once,
        "unconfirmed": i.unconfirmed,
    }


def _failed(f: Failed) -> JSON:
    return {
        "source": f.origin.source,
        "row": f.origin.row,
        "user": f.user,
        "reason": f.reason.name.lower(),
        "label": f.shown,
        "column": f.column,
        "detail": f.detail,
        "http_status": f.http_status,
        "graph_code": f.graph_code,
        "request_id": f.request_id,
        "not_sent": f.not_sent,
    }


def _skipped(s: Skipped) -> JSON:
    return {
        "source": s.origin.source,
        "row": s.origin.row,
        "user": s.user,
        "reason": s.reason.name.lower(),
        "label": s.reason.value,
        "detail": s.detail,
        "previous_run": s.previous_run,
    }


def _tenant(tenant: Tenant | None) -> JSON | None:
    if tenant is None:
        return None
    return {"id": tenant.id, "name": tenant.name, "graph_root": tenant.graph_root}


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _path(path: Path | None) -> str | None:
    return str(path) if path is not None else None
