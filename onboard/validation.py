"""`onboard validate`: every check a run makes before its first create, creating nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .checks import RowChecks, check_all, find_people, read_policy, within_policy
from .config import Config
from .connect import Connection, connect
from .decide import Named
from .errors import PolicyDisabled
from .given import Clock, clock_of, read_inputs
from .history import dry_run
from .outcomes import Failed, Origin, PassRequest, Reason, Skipped
from .reader import InputFile, check_rows
from .tenant import Tenant


@dataclass(slots=True)
class Validation:
    """What `onboard validate` found: the rows ready to send, and every other row's outcome."""

    files: list[InputFile]
    ready: list[PassRequest]
    problems: list[Failed]
    skipped: list[Skipped]
    policy: str | None = None  # the pass policy as read (online), for the summary line
    tenant: Tenant | None = None  # signed in to (online)
    journal: str | None = None  # what the journal said of earlier runs, for the summary line
    attention: list[str] = field(default_factory=list)  # as RunReport.attention
    checks: list[tuple[str, str]] = field(default_factory=list)  # what was (not) checked online


async def validate(
    config: Config,
    inputs: Sequence[str | Path] = (),
    *,
    requests: Sequence[PassRequest] | None = None,
    env: Mapping[str, str] | None = None,
    online: bool = False,
    client: Connection | None = None,
    now: Clock | None = None,
    allow_users: Collection[str] = (),
) -> Validation:
    """Every check a run makes before its first create, without creating anything: the files
    (and `requests`), their columns and cells, repeats; the journal (the rows `run` would skip
    as already issued or not yet due); and `online`, the pass policy and each person in the
    directory (by UPN, object id, mail or employee id), signed in as the config says or
    through `client`. `env` and `now` as for `run`. Raises as `run` does for an unusable file,
    configuration or sign-in."""
    today = clock_of(now)()
    files = read_inputs(inputs, requests, config.input, config.pass_, today)
    wanted, checked = check_rows(files)
    # The same typo check `run` makes (so validate is a true dry run of it).
    named = Named.check(config.input.match_by, wanted, checked, (), allow_users)
    found = Validation(files, [], [], [])
    async with contextlib.AsyncExitStack() as stack:
        if online and wanted:
            connection = client or await connect(config, env or {}, stack)
            found.tenant, found.attention = connection.tenant, list(connection.attention)
            wanted = await _validate_online(config, connection, wanted, checked, found,
                                            named.allow)  # fmt: skip
        wanted, decided, found.journal = dry_run(config, wanted, today, found.tenant)
        checked.extend(decided)
    order = sorted(checked, key=lambda o: (o.origin.source, o.origin.row))
    found.ready = wanted
    found.problems = [o for o in order if isinstance(o, Failed)]
    found.skipped = [o for o in order if isinstance(o, Skipped)]
    return found


async def _validate_online(
    config: Config,
    connection: Connection,
    requests: list[PassRequest],
    checked: list[Failed | Skipped],
    found: Validation,
    allowed: frozenset[str],
) -> list[PassRequest]:
    """The pass policy, the people in the directory, their accounts: read, nothing created."""
    client = connection.client
    policy = None
    try:
        policy, found.policy = await read_policy(client, config, None)
    except PolicyDisabled as exc:
        found.policy = "disabled"
        checked.append(Failed(Origin("(tenant)", 0), "", Reason.POLICY_OFF, str(exc)))
    requests, looked_up = await find_people(config, client, requests)
    requests, refused = within_policy(policy, requests)
    checks = RowChecks(config, client, len(requests), allowed=allowed)
    keep, screened = await check_all(checks, requests)
    if requests:
        found.checks, unchecked = checks.summary()
        found.attention.extend(unchecked)
    checked.extend([*looked_up, *refused, *screened])  # type: ignore[list-item]
    return keep
