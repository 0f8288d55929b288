"""The documentation: generated parts match the code, links resolve, the README stays a page."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from urllib.parse import unquote

from onboard import cli
from onboard.outcomes import REASON_HELP, Reason

ROOT = Path(__file__).resolve().parent.parent
README_MAX_BYTES = 15_000  # the front door is one page; the manual lives in docs/
SKIPPED_DIRS = {"node_modules", "build", "dist", "__pycache__"}
FENCE = re.compile(r"^ *(```|~~~).*?^ *\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`]*`")
INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def _markdown_files(root: Path) -> list[Path]:
    return sorted(
        path
        for path in root.rglob("*.md")
        if not any(
            part.startswith(".") or part in SKIPPED_DIRS or part.endswith(".egg-info")
            for part in path.relative_to(root).parts[:-1]
        )
    )


def _prose(text: str) -> str:
    """The text a reader sees as prose: code blocks and code spans hold no links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _anchors(path: Path) -> set[str]:
    """The fragment ids GitHub gives the headings of a Markdown file."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def broken_links(root: Path) -> list[str]:
    """Every relative link in root's Markdown files that names no file, or no heading in it."""
    broken = []
    for source in _markdown_files(root):
        prose = _prose(source.read_text(encoding="utf-8"))
        targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
        for target in targets:
            if SCHEME.match(target):
                continue
            path, _, fragment = target.partition("#")
            resolved = (source.parent / unquote(path)).resolve() if path else source
            where = f"{source.relative_to(root)}: {target}"
            if not resolved.is_relative_to(root.resolve()) or not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
                broken.append(f"{where} (no such heading)")
    return broken


def test_every_relative_link_in_the_markdown_resolves() -> None:
    """Each relative link in every Markdown file names a file of the repo, and its heading."""
    assert _markdown_files(ROOT)  # the README at least: a wrong root would pass vacuously
    assert broken_links(ROOT) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    """A link to no file, or to a heading the file lacks, is reported; good ones are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# The guide\n\n## Safe to re-run\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/guide.md) [ok](docs/guide.md#safe-to-re-run) [ok](#top)\n\n# Top\n\n"
        "[web](https://example.com/x.md) `[code](nowhere.md)`\n\n"
        "```\n[fenced](nowhere.md)\n```\n\n"
        "[gone](docs/missing.md) [bad anchor](docs/guide.md#safe-to-rerun) [out](../x.md)\n"
    )
    assert broken_links(tmp_path) == [
        "README.md: docs/missing.md (no such file)",
        "README.md: docs/guide.md#safe-to-rerun (no such heading)",
        "README.md: ../x.md (no such file)",
    ]


def test_generated_docs_match_the_code() -> None:
    """The exit-code reference and the README's table are what docs/generate.py writes."""
    expected = runpy.run_path(str(ROOT / "docs" / "generate.py"))["expected"]()
    assert ROOT / "docs" / "reference" / "exit-codes.md" in expected
    assert ROOT / "docs" / "reference" / "failure-reasons.md" in expected
    stale = [
        str(path.relative_to(ROOT))
        for path, text in expected.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert stale == [], "run: .venv/bin/python -m docs.generate"


def test_every_exit_code_is_explained_once_in_one_line() -> None:
    """Each EXIT_* constant of the CLI has one meaning and one action, each a single line."""
    constants = {
        value
        for name, value in vars(cli).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert set(cli.EXIT_CODES) == constants
    for said in cli.EXIT_CODES.values():
        assert said.meaning.strip() and said.action.strip()
        assert "\n" not in said.meaning + said.action


def test_every_reason_is_explained_in_one_line() -> None:
    """Each Reason has what it means and what to do, each a single line; a label has one
    placeholder, which its reason fills in."""
    assert list(REASON_HELP) == list(Reason)  # every one, in the enum's order
    for reason, said in REASON_HELP.items():
        assert said.meaning.strip() and said.action.strip(), reason
        assert "\n" not in said.meaning + said.action + said.label, reason
        if said.label:
            assert re.fullmatch(r"[^<>]*<[^<>]+>[^<>]*", said.label), reason
            assert "Start Date" in reason.labelled("Start Date")
        else:
            assert reason.labelled("Start Date") == reason.value
    assert Reason.INVALID.labelled("Start Date") == "Invalid Start Date"
    assert Reason.NO_MATCH.labelled(r"employee id \1") == r"No user with this employee id \1"


def test_the_failure_reference_lists_each_reason_under_its_kind() -> None:
    """The generated page has one table row per reason: failures first, then skips."""
    page = (ROOT / "docs" / "reference" / "failure-reasons.md").read_text(encoding="utf-8")
    failed, skipped = page.split("\n## Failed rows\n")[1].split("\n## Skipped rows\n")
    for reason, said in REASON_HELP.items():
        row = f"| `{said.label or reason.value}` | "
        assert (row in skipped) == reason.skip and (row in failed) != reason.skip, reason


def test_the_readme_is_one_page() -> None:
    """The README stays the front door: at most 15,000 bytes."""
    assert len((ROOT / "README.md").read_bytes()) <= README_MAX_BYTES


def test_the_readme_quick_start_is_what_ci_runs() -> None:
    """The README's test command is .ci/run's, word for word; the demo command is shown."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = ci.split("# The README's test command, word for word:\n", 1)[1]
    test_command = test_command.splitlines()[0]
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)\n```", quick_start, re.DOTALL)
    assert blocks == [
        "python3 -m venv .venv && .venv/bin/pip install -q . && .venv/bin/onboard run "
        "samples/new_hires.xlsx",
        test_command,
    ]


def test_measured_figures_live_in_the_benchmarks_readme_only() -> None:
    """No Markdown outside benchmarks/ quotes a measured time or throughput."""
    measured = re.compile(r"\b\d+\.\d+ ?s\b|\bpasses/s\b|\d+ MB peak")
    quoting = [
        f"{path.relative_to(ROOT)}: {hit.group()}"
        for path in _markdown_files(ROOT)
        if path.parent != ROOT / "benchmarks"
        for hit in measured.finditer(path.read_text(encoding="utf-8"))
    ]
    assert quoting == []
