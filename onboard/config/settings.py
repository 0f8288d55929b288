"""The configuration, declared once: a pydantic model per section of config.yaml, each key
with its default, what it accepts (its kind, bounds or choices) and a description whose first
sentence is its one-line doc. `load_config` validates a file against these models, and the
reference, the file `onboard init` writes and the shipped config.yaml are generated from them.

A key's declared default is what a file would say (``endpoint: null``); validation turns it
into what the code uses (the cloud's Graph root), so settings made in code get it too. The
defaults describe a real tenant: ``graph.endpoint`` null means the cloud's Graph root, and only
``graph.endpoint: simulator`` uses the built-in simulator."""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..rate import (
    DEFAULT_MAX_RATE,
    DEFAULT_MAX_READ_RATE,
    MAILBOX_CONCURRENCY,
    MAILBOX_MESSAGES_PER_MINUTE,
)
from .fields import (
    MAX_SHEET_INDEX,
    NULL_IS_DEFAULT,
    Addresses,
    Capitals,
    Clock,
    DateOrder,
    DefaultPath,
    Flag,
    Headers,
    Kind,
    MaybePath,
    MaybeText,
    Number,
    OrdersByFile,
    Sheet,
    Stripped,
    Text,
    Whole,
    loading,
    problem,
    required,
    text_of,
    wanted,
)
from .secret import Secret
from .values import (
    EXAMPLE_TIMEZONE,
    ca_bundle_problem,
    https_problem,
    machine_zone,
    normal_url,
    tenant_problem,
    timezone_problem,
)

SIMULATOR = "simulator"
# With the simulator (or no config file at all), a pass.timezone left unset means UTC; a real
# tenant must choose its zone.
SIMULATOR_TIMEZONE = "UTC"
DEFAULT_CLIENT_SECRET_ENV = "ONBOARD_CLIENT_SECRET"  # noqa: S105 (a variable's name)
MIN_LIFETIME_MINUTES = 10  # Entra's own bounds on a pass's lifetime
MAX_LIFETIME_MINUTES = 43200
MAX_BATCH_SIZE = 20  # Graph's limit on requests in one JSON batch
MAX_WAIT_SECONDS = 3600.0  # no timeout, backoff, settle or grace time onboard waits is longer
# Limits on an input file: far above any month's new hires, far below what could exhaust memory.
MAX_ROWS_LIMIT = 10_000_000
MAX_MB_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class Cloud:
    graph_root: str
    authority_host: str


CloudName = Literal["global", "usgov", "usgov-dod", "china"]
CLOUDS: dict[str, Cloud] = {  # tests/test_config.py checks it names each CloudName
    "global": Cloud("https://graph.microsoft.com", "https://login.microsoftonline.com"),
    "usgov": Cloud("https://graph.microsoft.us", "https://login.microsoftonline.us"),
    "usgov-dod": Cloud("https://dod-graph.microsoft.us", "https://login.microsoftonline.us"),
    "china": Cloud(
        "https://microsoftgraph.chinacloudapi.cn", "https://login.partner.microsoftonline.cn"
    ),
}
# Clouds where Graph documents the pass endpoints only in beta (China, operated by 21Vianet).
BETA_ONLY_CLOUDS = frozenset({"china"})
AuthMethod = Literal["client_secret", "certificate", "managed_identity"]
AUTH_METHODS: tuple[str, ...] = get_args(AuthMethod)
MatchBy = Literal["upn", "mail", "employeeId"]
MATCH_BY: tuple[str, ...] = get_args(MatchBy)
MATCH_COLUMN = {"upn": "user", "mail": "mail", "employeeId": "employee_id"}
Existing = Literal["skip", "replace"]
EXISTING: tuple[str, ...] = get_args(Existing)
DeliveryMethod = Literal["none", "mail"]
DeliverTo = Literal["manager", "sponsor", "column"]
# The subject of a delivery message: a Jinja2 template (docs/guide/delivery.md lists what it
# may use); a simulated run's subject is prefixed "SIMULATED: " whatever the template says.
DEFAULT_SUBJECT = (
    "Temporary Access {{ 'Pass' if count == 1 else 'Passes' }} for your new "
    "{{ 'hire' if count == 1 else 'hires' }}"
)
# An address as Exchange takes one: something@domain.tld, no spaces, no angle brackets.
ADDRESS = re.compile(r"[^@\s<>,;\\\"]+@[^@\s<>,;\\\"]+\.[^@\s<>,;\\\".]+")
SecretKey = Annotated[InstanceOf[Secret], Kind.SECRET]


def names_simulator(endpoint: Any) -> bool:
    """Whether a graph.endpoint value, as written, asks for the built-in simulator."""
    return isinstance(endpoint, str) and endpoint.rstrip("/") == SIMULATOR


def _zone(value: Any, info: ValidationInfo) -> str:
    """pass.timezone: unset is UTC with the simulator (or no file); a real tenant must set it."""
    if value is None or value == "":
        context = loading(info)
        if context is None or not context.real:
            return SIMULATOR_TIMEZONE
        mine = machine_zone(context.env)
        suggestion = f"{mine} (this machine's zone)" if mine else EXAMPLE_TIMEZONE
        raise required(
            "is not set: for a real tenant, set the IANA time zone the start dates are in, "
            f"e.g. timezone: {suggestion}"
        )
    zone = text_of(value).strip()
    trouble = timezone_problem(zone)
    if trouble is not None:
        raise problem(trouble)
    return zone


Zone = Annotated[str, Kind.TEXT, BeforeValidator(_zone)]


class Settings(BaseModel):
    """A section of the configuration (or the columns inside `input`): frozen, and refusing
    keys it does not declare."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        hide_input_in_errors=True,  # a pydantic message never quotes a value (a secret)
    )

    @model_validator(mode="before")
    @classmethod
    def _empty(cls, data: Any) -> Any:
        return {} if data is None else data  # a section written with no keys under it

    def public_values(self) -> Iterator[tuple[str, str]]:
        """Each key's value as the audit records it: where a secret is read from, never the
        secret (its `_env` and `_file` keys are in that `where`)."""
        for key in type(self).model_fields:
            value = getattr(self, key)
            if key.endswith(("_env", "_file")) and isinstance(
                getattr(self, key.rpartition("_")[0], None), Secret
            ):
                continue
            if isinstance(value, Secret):
                value = value.where if value.configured else None
            elif isinstance(value, Columns):
                value = "; ".join(f"{k}: {', '.join(v)}" for k, v in value.items())
            elif isinstance(value, time):
                value = f"{value:%H:%M}"
            yield key, "" if value is None else str(value)


def secret_of(cls: type[Settings], value: Any, info: ValidationInfo) -> Secret:
    """A secret key's inline value (never shown) with the variable and the file its `_env`
    and `_file` keys name (declared before it), as one Secret."""
    if isinstance(value, Secret):
        return value
    if value is not None and not isinstance(value, str):
        raise wanted()
    name = str(info.field_name)
    key = f"{section_name(cls)}.{name}"
    file = info.data.get(f"{name}_file")
    if value is not None and file is not None:
        raise problem(f"and {key}_file are both set; keep one")
    return Secret(key, info.data.get(f"{name}_env"), file, value)


class GraphSettings(Settings):
    """Which Microsoft Graph onboard talks to."""

    cloud: Annotated[CloudName, Stripped] = Field(
        "global",
        description="Sets the Graph root and the sign-in host. The token's scope is then "
        "`{graph root}/.default`.",
    )
    endpoint: Text = Field(
        None,
        validate_default=True,
        description='null: the cloud\'s Graph; "simulator": the built-in one. '
        "Otherwise an https:// URL (http:// only to this machine: localhost, 127.0.0.1, ::1); "
        "nothing ever falls back to the simulator.",
    )
    api_version: Annotated[Literal["v1.0", "beta"], Stripped] = Field(
        "v1.0",
        description="The Graph API version. In China Graph documents the pass endpoints only "
        "in beta.",
    )
    ca_bundle: MaybePath = Field(
        None,
        description="An extra CA file to trust (a TLS-inspecting proxy's). PEM; the system's "
        "trust store (and SSL_CERT_FILE) is always used too, and verification cannot be turned "
        "off.",
    )

    @property
    def is_simulator(self) -> bool:
        return self.endpoint == SIMULATOR

    @property
    def graph_root(self) -> str:
        return CLOUDS[self.cloud].graph_root

    @field_validator("endpoint", mode="before")
    @classmethod
    def _cloud_root(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or value == "":  # (a cloud that is no cloud has its own error)
            return CLOUDS[info.data.get("cloud", cls.model_fields["cloud"].default)].graph_root
        return value

    @field_validator("endpoint")
    @classmethod
    def _https(cls, value: str) -> str:
        endpoint = value.rstrip("/")
        if endpoint == SIMULATOR:
            return endpoint
        trouble = https_problem(endpoint)
        if trouble is not None:
            raise problem(trouble)
        return normal_url(endpoint)

    @field_validator("ca_bundle")
    @classmethod
    def _pem(cls, value: Path | None) -> Path | None:
        trouble = None if value is None else ca_bundle_problem(value)
        if trouble is not None:
            raise problem(trouble)
        return value

    @model_validator(mode="after")
    def _beta_only(self) -> Self:
        if self.cloud in BETA_ONLY_CLOUDS and self.api_version != "beta" and not self.is_simulator:
            raise problem(
                f"{self.cloud}: Graph documents the Temporary Access Pass endpoints there only "
                "in beta; set graph.api_version: beta",
                key="cloud",
                at="api_version",
            )
        return self


class AuthSettings(Settings):
    """How onboard signs in: the tenant, the app registration and its credential."""

    tenant_id: MaybeText = Field(
        None,
        description="Your tenant's id (GUID) or domain; required for a real tenant. common, "
        "organizations and consumers are refused (app-only tokens need a tenant).",
    )
    client_id: MaybeText = Field(
        None,
        description="The app's Application (client) ID; null: a system-assigned identity. "
        "Required for a real tenant otherwise.",
    )
    method: Annotated[AuthMethod, Stripped] = Field(
        "client_secret", description="The credential onboard signs in with."
    )
    client_secret_env: Annotated[Text, NULL_IS_DEFAULT] = Field(
        DEFAULT_CLIENT_SECRET_ENV,
        description="The environment variable holding the client secret. Export it before each "
        "run.",
    )
    client_secret_file: MaybePath = Field(
        None,
        description="Or a file holding the secret (wins over the variable). A mounted secret or a "
        "root-only file; a trailing newline is dropped.",
    )
    client_secret: SecretKey = Field(
        None,
        validate_default=True,
        description="Or the secret itself: refused unless this file is chmod 600. Never from an "
        "`ONBOARD_*` variable; the variable or the file is better.",
    )
    certificate_path: MaybePath = Field(
        None,
        description="With method certificate: a PEM or PFX/P12 file. A PEM holds the private "
        "key and the certificate.",
    )
    certificate_password_env: MaybeText = Field(
        None, description="The variable holding the certificate's password, if it has one."
    )
    certificate_password_file: MaybePath = Field(
        None, description="Or a file holding the certificate's password."
    )
    certificate_password: SecretKey = Field(
        None,
        validate_default=True,
        description="Or the password itself: refused unless this file is chmod 600.",
    )
    authority: MaybeText = Field(
        None,
        description="The sign-in host, when not the cloud's own. onboard appends /{tenant_id}; "
        "https:// only (http:// only to this machine); a host msal does not know is used "
        "without instance discovery.",
    )

    @field_validator("tenant_id")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        tenant = None if value is None else value.strip()
        trouble = None if tenant is None else tenant_problem(tenant)
        if trouble is not None:
            raise problem(trouble)
        return tenant

    @field_validator("client_id")
    @classmethod
    def _client(cls, value: str | None) -> str | None:
        return None if value is None else value.strip()

    @field_validator("authority")
    @classmethod
    def _authority(cls, value: str | None) -> str | None:
        authority = None if value is None else value.rstrip("/")
        trouble = None if authority is None else https_problem(authority)
        if trouble is not None:
            raise problem(trouble)
        return authority

    @field_validator("client_secret", "certificate_password", mode="before")
    @classmethod
    def _secret(cls, value: Any, info: ValidationInfo) -> Secret:
        return secret_of(cls, value, info)

    @model_validator(mode="after")
    def _real_tenant(self, info: ValidationInfo) -> Self:
        """A file for a real tenant names it, and the app (but for a system-assigned identity):
        nothing about a real tenant is guessed."""
        context = loading(info)
        if context is None or not context.real:
            return self
        if self.tenant_id is None:
            raise required("is required for a real tenant", key="tenant_id")
        if self.client_id is None and self.method != "managed_identity":
            raise required("is required for a real tenant", key="client_id")
        if self.method == "certificate" and self.certificate_path is None:
            raise required("certificate needs auth.certificate_path", key="method")
        return self


class Columns(Settings):
    """The header names each column is found by: case-insensitive, the first match wins. It
    reads as a mapping of column to names (`columns["user"]`, `columns.items()`)."""

    user: Headers = Field(
        ("userPrincipalName", "UPN", "Work Email", "Email"),
        description="The user: a UPN or an object id.",
    )
    start_date: Headers = Field(
        ("Start Date", "Hire Date"),
        description="The first working day. Without this column, passes are usable at once.",
    )
    lifetime_minutes: Headers = Field(
        ("Lifetime", "Lifetime (minutes)"), description="A row's own lifetime (optional column)."
    )
    usable_once: Headers = Field(
        ("One-time", "Usable Once"), description="A row's own yes or no (optional column)."
    )
    display_name: Headers = Field(
        ("Display Name", "Name"), description="Shown in the audit (optional column)."
    )
    # Used with input.match_by mail / employeeId: the column the directory is searched by.
    mail: Headers = Field(
        ("Mail", "Email", "Work Email", "E-mail"),
        description="With match_by mail: the people's email addresses.",
    )
    employee_id: Headers = Field(
        ("employeeId", "Employee ID", "Employee Number", "Employee No"),
        description="With match_by employeeId: the people's employee ids.",
    )
    deliver_to: Headers = Field(
        ("Deliver To", "Send Pass To"),
        description="With delivery.to column: the address each row's pass is mailed to.",
    )

    def __getitem__(self, column: str) -> tuple[str, ...]:
        if column not in type(self).model_fields:
            raise KeyError(column)
        names: tuple[str, ...] = getattr(self, column)
        return names

    def items(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(column, self[column]) for column in type(self).model_fields]


class InputSettings(Settings):
    """How the new-hire sheets are read."""

    sheet: Sheet | None = Field(
        None,
        description="A sheet name or 0-based index; null: the one with the user column. null "
        "picks the visible sheet with the user column in its first 30 rows; two such sheets "
        "are refused (name one). A hidden sheet is read only when named here; an index is at "
        f"most {MAX_SHEET_INDEX}.",
    )
    match_by: Annotated[MatchBy, Stripped] = Field(
        "upn",
        description="How the sheet names people. upn: a UPN or an object id; mail or "
        "employeeId: that column is looked up in the directory first.",
    )
    date_order: Annotated[DateOrder | None, Capitals] = Field(
        None,
        description="How dates written as text are read; null: unambiguous ones only. DMY: "
        "01/12/2026 is 1 December. ISO and Excel dates are always read; an ambiguous text date "
        "fails its row.",
    )
    date_order_by_file: OrdersByFile = Field(
        None,
        validate_default=True,
        description="Per file name, the order of dates written otherwise. For example "
        '`{"ny-*.csv": MDY}`: `*` and `?` match any characters, any case; quote each pattern. '
        "A file no pattern names is read by date_order; a file two patterns give different "
        "orders is refused.",
    )
    columns: Columns = Field(
        default_factory=dict,
        validate_default=True,
        description="Header names to look for (any case; the first match wins).",
    )
    max_rows: Whole = Field(
        200_000,
        ge=1,
        le=MAX_ROWS_LIMIT,
        description="More rows (blank ones too) are refused before anything is sent. A month's "
        "hires are far fewer; raise it for a true mass enrolment.",
    )
    max_mb: Number = Field(
        200.0,
        ge=0.001,
        le=MAX_MB_LIMIT,
        description="The largest file, and largest unpacked .xlsx, in MB. Bigger is refused "
        "unread (decompression bombs).",
    )

    @property
    def key_column(self) -> str:
        """The column that names the person: the user column, or the one looked up in Graph."""
        return MATCH_COLUMN[self.match_by]


class PassSettings(Settings):
    """The passes: how long they last, when they start, and which users may get one."""

    lifetime_minutes: Whole = Field(
        480,
        ge=MIN_LIFETIME_MINUTES,
        le=MAX_LIFETIME_MINUTES,
        description="A pass's lifetime when its row gives none. It must also be within the "
        "tenant policy's range.",
    )
    usable_once: Flag = Field(True, description="One-time use when the row does not say.")
    start_time: Clock = Field(
        "08:00",
        validate_default=True,
        description="The local time on the start date when the pass becomes valid. HH:MM, 24-hour.",
    )
    timezone: Zone = Field(
        None,
        validate_default=True,
        description="The IANA zone of the start dates; required for a real tenant. For example "
        "Europe/London; daylight saving is handled, and the error suggests this machine's "
        "zone. With the simulator, null means UTC.",
    )
    existing: Annotated[Existing, Stripped] = Field(
        "skip",
        description="A user already holding a usable pass: keep it, or replace it. A pass not "
        "yet valid counts too (one the helpdesk issued in the portal, say). skip lists each "
        "user's current pass first (one read per user) and keeps it: the row is skipped, saying "
        "when that pass was created and starts. replace issues anyway, and the new pass "
        "replaces it; once the journal holds passes of this tenant, replace still lists a row's "
        "pass when the journal cannot tie the row to a person by name, so a renamed user never "
        "gets a second pass. skip is the default: a replaced pass may already be handed out, "
        "and nobody would know it stopped working until the hire could not sign in. Passes "
        "onboard issued are tracked by the journal either way; --reissue-user replaces on "
        "purpose.",
    )
    allow_existing_accounts: Flag = Field(
        False,
        description="Also users with admin roles or sign-in methods (not new hires). "
        "false: such rows are refused before any pass is created (--allow-user UPN makes one "
        "exception), so a row added to the sheet cannot take over an admin's account.",
    )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class RunSettings(Settings):
    """How fast and how persistently a run sends."""

    concurrency: Whole = Field(
        20,
        ge=1,
        le=256,
        description="The most requests in flight at once. How fast they go is max_rate's business.",
    )
    max_rate: Number = Field(
        DEFAULT_MAX_RATE,
        ge=0.1,
        le=10_000,
        description="The ceiling on creates per second. The rate adapts below it, to Graph's "
        "write budget; all workers together; lower it to leave room for other apps.",
    )
    max_read_rate: Number = Field(
        DEFAULT_MAX_READ_RATE,
        ge=0.1,
        le=100_000,
        description="The ceiling on resource units per second for reads. Checks and lookups "
        "adapt below it to Graph's resource-unit budget, apart from the creates.",
    )
    batch_size: Whole = Field(
        1,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="Creates per JSON $batch request (1: no batching). Measured no faster when "
        "Graph throttles (each request in a batch counts); see benchmarks/README.md.",
    )
    max_attempts: Whole = Field(
        8, ge=1, le=100, description="Attempts per row for 429, 5xx and timeouts, then it fails."
    )
    timeout_seconds: Number = Field(
        60.0, ge=0.1, le=MAX_WAIT_SECONDS, description="The longest one request may take."
    )
    backoff_seconds: Number = Field(
        1.0,
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="The first retry wait without a Retry-After; it doubles, with jitter.",
    )
    backoff_max_seconds: Number = Field(
        60.0, ge=0, le=MAX_WAIT_SECONDS, description="The longest such wait."
    )
    settle_seconds: Number = Field(
        10.0,
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="After a lost answer to a create, wait this long, then check. "
        "Graph may finish that request after the retry: onboard asks which pass the user holds "
        "and issues again if it is not the one in the audit.",
    )
    stop_grace_seconds: Number = Field(
        15.0,
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="After SIGINT or SIGTERM, the time requests in flight may take.",
    )
    due_within_days: Whole | None = Field(
        None,
        ge=0,
        le=366,
        description="Only rows starting within this many days; null: all rows. --due-within "
        "overrides it.",
    )


class OutputSettings(Settings):
    """The audit workbook: where it goes and how it is protected."""

    dir: DefaultPath = Field(
        Path("audit"),
        validate_default=True,
        description="Where audit workbooks go (created owner-only); --out overrides it.",
    )
    password_env: MaybeText = Field(
        None,
        description="A variable holding a password that encrypts the workbook. Recommended; "
        "standard Office encryption: Excel and LibreOffice ask for the password.",
    )
    password_file: MaybePath = Field(None, description="Or a file holding that password.")
    password: SecretKey = Field(
        None,
        validate_default=True,
        description="Or the password itself: refused unless this file is chmod 600.",
    )
    redacted_copy: Flag = Field(
        False,
        description="Also write a copy with the pass column masked. Named "
        "`onboard-<run>-redacted.xlsx`: for HR or a ticket.",
    )

    @field_validator("password", mode="before")
    @classmethod
    def _secret(cls, value: Any, info: ValidationInfo) -> Secret:
        return secret_of(cls, value, info)


class DeliverySettings(Settings):
    """Delivering the passes: one message per recipient, listing all of their hires' passes.

    The recipient is each hire's manager, sponsor, or an address in the sheet (delivery.to)."""

    method: Annotated[DeliveryMethod, Stripped] = Field(
        "none",
        description="How the passes reach whoever hands them over. none: from the audit "
        "workbook only; mail: after the passes are issued, each recipient gets one message "
        "for the run listing all of their hires, sent through Graph (Mail.Send).",
    )
    sender: MaybeText = Field(
        None,
        description="The mailbox that sends, e.g. onboarding@contoso.com; required with "
        "method mail. Checked before the first pass is created: a sender without a mailbox "
        "stops the run.",
    )
    to: Annotated[DeliverTo, Stripped] = Field(
        "manager",
        description="Who gets a hire's pass. manager: the directory's manager "
        "(User.Read.All); sponsor: the hire's one sponsor; column: an address in the sheet's "
        "input.columns.deliver_to column. A hire with none, or whose recipient has no "
        "mailbox, is mailed to nobody: the pass stays in the audit.",
    )
    cc: Addresses = Field(
        (),
        description="Addresses copied on every message. Each gets every pass of the run.",
    )
    subject: Text = Field(
        DEFAULT_SUBJECT,
        description="The subject, a Jinja2 template (placeholders: docs/guide/delivery.md). "
        'A simulated run\'s subject starts "SIMULATED: ".',
    )
    template: MaybePath = Field(
        None,
        description="An HTML body template file; null: the built-in one. Jinja2, "
        "autoescaped; the plain-text part stays the built-in one.",
    )
    save_to_sent_items: Flag = Field(
        False,
        description="Keep a copy of each message in the sender's Sent Items. false: a copy "
        "of every pass would otherwise stay in that mailbox.",
    )
    max_per_minute: Number = Field(
        float(MAILBOX_MESSAGES_PER_MINUTE),
        ge=0.1,
        le=100_000,
        description="The most messages a minute. Exchange Online allows 30 per mailbox; "
        "onboard paces at 95% of this, and a 429 pauses mail alone. More only against the "
        "simulator.",
    )

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str | None) -> str | None:
        address = None if value is None else value.strip()
        if address is not None and not ADDRESS.fullmatch(address):
            raise problem(f"must be an email address (name@domain), got {address!r}")
        return address

    @field_validator("cc")
    @classmethod
    def _copies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        addresses = tuple(a.strip() for a in value)
        for address in addresses:
            if not (address.isprintable() and ADDRESS.fullmatch(address)):
                raise problem(f"must be email addresses (name@domain), got {address!r}")
        return addresses

    @model_validator(mode="after")
    def _needs_sender(self) -> Self:
        if self.method == "mail" and self.sender is None:
            raise problem(
                "is mail, so delivery.sender must name the mailbox that sends (e.g. "
                "onboarding@contoso.com)",
                key="method",
                at="sender",
            )
        return self


class StateSettings(Settings):
    """What onboard remembers between runs."""

    path: DefaultPath = Field(
        Path("state/onboard-journal.sqlite"),
        validate_default=True,
        description="The run journal (resume, re-runs), created owner-only. One per tenant and "
        "job.",
    )


class SimulatorSettings(Settings):
    """The built-in simulator: used when graph.endpoint is "simulator", and by `simulate`."""

    tenant: MaybePath = Field(
        None,
        description="A tenant file of users and pass policy; null: every name@domain exists. "
        "See samples/tenant.yaml.",
    )
    latency_ms: Number = Field(
        0.0, ge=0, le=60_000, description="Milliseconds added to every request."
    )
    fault_rate: Number = Field(0.0, ge=0, le=1, description="The share of requests answered 503.")
    lost_response_rate: Number = Field(
        0.0,
        ge=0,
        le=1,
        description="The share of creates whose answer is lost. Answered 504 after the pass "
        "was created.",
    )
    throttle_rate: Number | None = Field(
        None,
        ge=0.001,
        le=1_000_000,
        description="Writes per second before 429s; null: never throttle. The write budget's "
        "refill rate (429s say WriteLimitExceeded).",
    )
    throttle_burst: Whole = Field(
        100, ge=1, le=1_000_000, description="Writes allowed in a burst. The write budget's size."
    )
    read_rate: Number | None = Field(
        None,
        ge=0.001,
        le=1_000_000,
        description="Resource units per second before 429s; null: never throttle. Every request "
        "spends them, reads 1 to 2 each, writes 1 (429s say ResourceUnitLimitExceeded).",
    )
    read_burst: Whole = Field(
        8000,
        ge=1,
        le=1_000_000,
        description="Resource units allowed in a burst. The resource-unit budget's size.",
    )
    retry_after_seconds: Number | None = Field(
        None,
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="A fixed Retry-After; null: the time until the budget allows one more.",
    )
    seed: Whole | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="A random seed, for a repeatable pattern of faults.",
    )
    mail_per_minute: Whole = Field(
        MAILBOX_MESSAGES_PER_MINUTE,
        ge=1,
        le=1_000_000,
        description="Messages a mailbox may send a minute before 429s (Exchange: 30). "
        "Answered 429 ApplicationThrottled with a Retry-After, as Exchange does.",
    )
    mail_concurrency: Whole = Field(
        MAILBOX_CONCURRENCY,
        ge=1,
        le=1_000,
        description="sendMail requests a mailbox may have in flight (Exchange: 4).",
    )
    mail_dir: MaybePath = Field(
        None,
        description="Where accepted mail is written as .eml files; null: memory only. "
        "Owner-only files, one per message the simulator accepted; `onboard simulate` lists "
        "them.",
    )


class Config(Settings):
    """Every section, in the order a file lists them. `source` is the file it was read from
    (None: the defaults alone, which name no tenant: enough to read and check a sheet, list
    runs or serve the simulator, never to send)."""

    graph: GraphSettings = Field(default_factory=dict, validate_default=True)
    auth: AuthSettings = Field(default_factory=dict, validate_default=True)
    input: InputSettings = Field(default_factory=dict, validate_default=True)
    pass_: PassSettings = Field(default_factory=dict, validate_default=True, alias="pass")
    run: RunSettings = Field(default_factory=dict, validate_default=True)
    output: OutputSettings = Field(default_factory=dict, validate_default=True)
    delivery: DeliverySettings = Field(default_factory=dict, validate_default=True)
    state: StateSettings = Field(default_factory=dict, validate_default=True)
    simulator: SimulatorSettings = Field(default_factory=dict, validate_default=True)
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        return self._source

    @model_validator(mode="after")
    def _remember_source(self, info: ValidationInfo) -> Self:
        context = loading(info)
        self._source = None if context is None else context.source
        return self

    def overridden(self, *, out_dir: Path | str | None, due_within_days: int | None) -> Self:
        """This config with a command's --out and --due-within in place of its own."""
        config = self
        if out_dir is not None:
            output = self.output.model_copy(update={"dir": Path(out_dir)})
            config = config.model_copy(update={"output": output})
        if due_within_days is not None:
            run = self.run.model_copy(update={"due_within_days": due_within_days})
            config = config.model_copy(update={"run": run})
        return config

    def sections(self) -> list[tuple[str, Settings]]:
        """(name in the file, settings) for each section."""
        return [
            (field.alias or name, getattr(self, name))
            for name, field in type(self).model_fields.items()
        ]

    def public_settings(self) -> list[tuple[str, str]]:
        """Settings worth recording in the audit (names of secret variables, never values)."""
        rows: list[tuple[str, str]] = [("config file", str(self.source or "(defaults)"))]
        for name, section in self.sections():
            if isinstance(section, SimulatorSettings) and not self.graph.is_simulator:
                continue
            rows.extend((f"{name}.{key}", value) for key, value in section.public_values())
        return rows


def section_name(cls: type[Settings]) -> str:
    """The name a file gives the section `cls` ("pass" for PassSettings)."""
    return next(
        field.alias or name
        for name, field in Config.model_fields.items()
        if field.annotation is cls
    )
