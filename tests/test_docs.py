"""The documentation stands alone: its links resolve inside the repository, and the result-file schema
names every field the code writes."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from loadgen.lib import runner
from loadgen.lib.analysis import find_knee, parse_slo
from loadgen.lib.compare import Settings, machine_info
from loadgen.lib.engine import Engine
from loadgen.lib.merge import merge_results
from loadgen.lib.plan import Plan, Target
from loadgen.lib.recorder import Recorder
from loadgen.lib.results import ERROR_KINDS, RunResult
from loadgen.lib.scrape import parse_exposition, summarize
from loadgen.lib.targets import TargetMix

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "docs" / "results-schema.md"
COMPARE_EXAMPLE = ROOT / "docs" / "compare-2026-11-29" / "results.json"


# -- links ---------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def markdown_files() -> list[Path]:
    """README.md and the other top-level pages, and everything under docs/."""
    return sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").rglob("*.md"))


def links(text: str) -> list[str]:
    """Targets of the inline links and images of a markdown text, outside code."""
    prose = _CODE_SPAN.sub("", _FENCE.sub("", text))
    return _LINK.findall(prose)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]{1,2}(?=\S)|(?<=\S)[`*_]{1,2}", lambda m: "_" if m.group() == "_" else "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a markdown file's headings get (repeated headings numbered as GitHub does)."""
    seen: dict[str, int] = {}
    result = set()
    for line in _FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def ignored_by_git(path: Path) -> bool:
    """Whether git ignores ``path`` (a build output or virtual environment a clone would not have)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return False
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^(https?:|mailto:)", target, re.I) or target.startswith("#"):
            continue
        where, _, anchor = target.partition("#")
        resolved = (page.parent / where).resolve()
        shown = f"{page.relative_to(ROOT)}: {target}"
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{shown} points outside the repository")
        elif not resolved.exists():
            problems.append(f"{shown} does not exist")
        elif ignored_by_git(resolved):
            problems.append(f"{shown} is ignored by git, so a clone does not have it")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{shown}: no heading with anchor #{anchor}")
    return problems


def test_markdown_link_parsing() -> None:
    """Links and images are found; code spans and blocks are not links; anchors are GitHub's."""
    text = "See [a](x.md) and ![plot](p.png), `[not](code.md)`\n```\n[no](block.md)\n```\n[b](y.md#z \"t\")"
    assert links(text) == ["x.md", "p.png", "y.md#z"]
    assert slug("Server scrape (`server`)") == "server-scrape-server"
    assert slug("`loadgen compare`: results.json") == "loadgen-compare-resultsjson"
    assert slug("Accepted vs done past the knee") == "accepted-vs-done-past-the-knee"


def test_readme_and_docs_links_resolve_inside_the_repository() -> None:
    pages = markdown_files()
    assert ROOT / "README.md" in pages and SCHEMA in pages
    problems = [problem for page in pages for problem in broken_links(page)]
    assert not problems, "\n".join(problems)


def test_readme_links_the_schema_and_the_experiment() -> None:
    readme_links = links((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "docs/results-schema.md" in readme_links
    assert "docs/experiment.md" in readme_links


# -- the result-file schema ----------------------------------------------------

# Which object a key's value is (a dict, or a list of dicts), by the object holding it; DATA marks dicts
# whose keys are data (error kinds, free-form settings), not field names.
DATA = "data"
CHILDREN: dict[str, dict[str, str]] = {
    "result": {"steps": "step", "knee": "knee", "slo": "slo"},
    "step": {"latency_ms": "latency", "service_time_ms": "latency", "connect_ms": "latency",
             "tls_handshake_ms": "latency",
             "generator": "generator", "server": "server", "timeseries": "timeseries", "errors": DATA,
             "codes": DATA, "targets": "target"},
    "target": {"errors": DATA, "codes": DATA, "latency_ms": "latency"},
    "compare": {"machine": "machine", "settings": "settings", "configurations": "configuration",
                "peers": "configuration"},
    "configuration": {"result": "result", "overload": "step", "overload_policies": "policy"},
    "policy": {"open": "step", "retry_storm": "step"},
    "settings": {"extra": DATA},
}
# The heading (its start) of the schema's table for each kind of object.
SECTIONS = {
    "result": "Top level",
    "step": "Step",
    "target": "Per-target breakdown",
    "latency": "Latency summary",
    "generator": "Generator",
    "server": "Server scrape",
    "timeseries": "Server time series",
    "knee": "Knee",
    "slo": "SLO verdicts",
    "errors": "Error kinds",
    "compare": "`loadgen compare`: results.json",
    "machine": "Machine",
    "settings": "Settings",
    "configuration": "Configuration entry",
    "policy": "Overload policy run",
}


def field_names(obj: dict[str, Any], kind: str, found: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Every (object kind, field name) in ``obj``, recursively; encoded histograms are strings, so leaves."""
    for key, value in obj.items():
        found.add((kind, key))
        child = CHILDREN.get(kind, {}).get(key)
        if child == DATA:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                assert child is not None, (
                    f"{kind}.{key} is a new kind of object: document it in {SCHEMA.name} and add it to CHILDREN"
                )
                field_names(item, child, found)
    return found


def documented_fields(text: str) -> dict[str, set[str]]:
    """For each section of the schema (by heading), the names in the first column of its tables."""
    sections: dict[str, set[str]] = {}
    current = ""
    for line in _FENCE.sub("", text).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        if heading:
            current = heading.group(1).strip()
            sections.setdefault(current, set())
            continue
        cell = re.match(r"^\|\s*`([^`]+)`", line)
        if cell:
            sections.setdefault(current, set()).add(cell.group(1))
    return sections


def section(sections: dict[str, set[str]], kind: str) -> set[str]:
    matches = [names for heading, names in sections.items() if heading.startswith(SECTIONS[kind])]
    assert len(matches) == 1, f"{SCHEMA.name} needs one section headed {SECTIONS[kind]!r}"
    return matches[0]


_EXPOSITION = """\
dataserv_connections_accepted_total {accepted}
dataserv_connections_done_total {done}
dataserv_connections_open 3
dataserv_listen_backlog{{endpoint="tcp:8080"}} 1
dataserv_work_queue_depth 2
dataserv_requests_shed_total{{reason="queue_full"}} {shed}
dataserv_request_duration_seconds_bucket{{route="/data",le="0.005"}} {fast}
dataserv_request_duration_seconds_bucket{{route="/data",le="+Inf"}} {done}
dataserv_request_duration_seconds_count{{route="/data"}} {done}
dataserv_reactor_lag_seconds_bucket{{le="0.001"}} {done}
dataserv_reactor_lag_seconds_bucket{{le="+Inf"}} {done}
dataserv_work_iterations 15907
dataserv_work_duration_seconds_sum {work}
dataserv_work_duration_seconds_count {done}
"""


class _Scraper:
    """Stands in for loadgen.lib.scrape.Scraper: the real parser and summary over three canned scrapes."""

    def __init__(self, reactor: Any, url: str, *, interval: float = 1.0) -> None:
        self.samples: list[Any] = []
        self.load_end: int | None = None

    def _scrape(self) -> None:
        n = len(self.samples)
        text = _EXPOSITION.format(accepted=10 * n, done=9 * n, shed=n, fast=8 * n, work=0.004 * 9 * n)
        self.samples.append(parse_exposition(text, float(n)))

    def start(self) -> Any:
        self._scrape()
        return succeed(None)

    def mark_load_end(self) -> None:
        self._scrape()
        self.load_end = len(self.samples) - 1

    def stop(self) -> Any:
        self._scrape()
        return succeed(summarize(self.samples, self.load_end))


def produced_result(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A result file's object as loadgen writes it: the real runner and engine, against an in-memory server.

    One open-model ``Connection: close`` step over a mix of two targets, with a scrape, a knee and an SLO:
    every optional field set.
    Connections are answered in memory on a fake clock (no sockets, no load, a few milliseconds).
    """
    reactor = MemoryReactorClock()
    monkeypatch.setattr(runner, "Scraper", _Scraper)
    monkeypatch.setattr(runner, "Engine", functools.partial(Engine, now=reactor.seconds))  # the fake clock
    target = TargetMix([Target(address="127.0.0.1", port=8080, host_header=b"127.0.0.1:8080", path=b"/data"),
                        Target(address="127.0.0.1", port=8080, host_header=b"127.0.0.1:8080", path=b"/echo",
                               method=b"POST", body=b"{}", weight=2)])
    plan = Plan(model="open", rate=1000.0, duration=0.05, connection="close", timeout=1.0)
    done = ensureDeferred(runner.run_steps(reactor, target, [plan], "http://127.0.0.1:8080/metrics"))
    answered = 0
    for _ in range(10_000):
        if done.called:
            break
        while answered < len(reactor.tcpClients):
            factory = reactor.tcpClients[answered][2]
            answered += 1
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            protocol.connectionLost(Failure(ConnectionDone()))
        reactor.advance(0.001)
    steps = done.result
    assert steps[0].ok > 0 and steps[0].server is not None and steps[0].timeseries
    steps[0].refined = True  # as sweep --refine marks the steps of its bisection
    result = RunResult(target="http://127.0.0.1:8080/data", model="open", connection="close",
                       started_at="2026-11-29T12:00:00+00:00", steps=steps)
    knee = find_knee(steps, 1000.0)
    assert knee is not None
    result.knee = knee.to_dict()
    result.slo = [parse_slo("p99<50ms").evaluate(steps[0])]
    return json.loads(json.dumps(result.to_dict()))


def assert_documented(document: dict[str, Any], kind: str) -> None:
    sections = documented_fields(SCHEMA.read_text(encoding="utf-8"))
    missing = sorted(f"{owner}.{name}" for owner, name in field_names(document, kind, set())
                     if name not in section(sections, owner))
    assert not missing, f"fields written but not in {SCHEMA.name}'s tables: {', '.join(missing)}"


def test_every_field_of_a_result_file_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    result = produced_result(monkeypatch)
    assert_documented(result, "result")
    merged = merge_results([RunResult.from_dict(result), RunResult.from_dict(result)]).to_dict()
    assert_documented(merged, "result")


def test_the_tls_fields_of_a_result_file_are_documented() -> None:
    """An https ``Connection: close`` step's handshake fields (from the recorder that writes them), and --insecure."""
    recorder = Recorder(0.0, closed_model=False, connect_times=True, handshake_times=True)
    recorder.connected(0.1, 0.0005)
    recorder.handshaken(0.1, 0.002)
    recorder.finished(0.1, 0.103, 0.105, None, 200)
    recorder.finished(0.2, None, 0.21, "tls")
    step = recorder.result(offered_rps=10.0, concurrency=None, duration=1.0, cpu_s=0.1, wall_s=1.0,
                           connections_opened=2)
    assert step.tls_handshake_ms is not None and step.errors == {"tls": 1}
    result = RunResult(target="https://localhost:8443/data", model="open", connection="close",
                       started_at="2026-11-29T12:00:00+00:00", steps=[step], insecure=True)
    assert_documented(json.loads(json.dumps(result.to_dict())), "result")
    merged = merge_results([result, result]).to_dict()
    assert merged["insecure"] is True and "tls_handshake_histogram" in merged["steps"][0]
    assert_documented(merged, "result")


def test_every_field_of_compare_results_is_documented() -> None:
    """The committed compare output (a real run's), plus what this version's compare adds around it."""
    document = json.loads(COMPARE_EXAMPLE.read_text(encoding="utf-8"))
    assert_documented(document, "compare")
    assert_documented({"machine": machine_info(), "settings": asdict(Settings())}, "compare")


def test_every_error_kind_is_documented() -> None:
    sections = documented_fields(SCHEMA.read_text(encoding="utf-8"))
    missing = [kind for kind in ERROR_KINDS if kind not in section(sections, "errors")]
    assert not missing, f"error kinds not in {SCHEMA.name}: {missing}"
