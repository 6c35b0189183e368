"""The HTML reports (``loadgen report --format html``, compare's report.html): one self-contained page, checked
statically and rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from loadgen_factories import Servers, loadgen, make_run, run_step, step_with
from test_loadgen_compare import document  # noqa: F401 - the fixture
from test_loadgen_report import fixed_result

from loadgen.lib.compare_report import build_html_report
from loadgen.lib.report import reconcile, render_html
from loadgen.lib.results import RunResult

# What would make a page fetch something: a src/href/action/poster/srcset naming a scheme or a host
# (anything but an in-page "#id", a data: URI, or nothing), a stylesheet link, a script with a source,
# a CSS import or url() that is not data:, a base or meta refresh, an iframe/object/embed.
_FETCHING = [
    re.compile(r"""\b(?:src|href|action|poster|srcset|formaction|data)\s*=\s*["']?\s*(?![#"'\s]|data:)""", re.I),
    re.compile(r"<(?:link|base|iframe|object|embed|frame)\b", re.I),
    re.compile(r"<script\b[^>]*\bsrc\b", re.I),
    re.compile(r"@import\b", re.I),
    re.compile(r"url\(\s*['\"]?(?!data:|#)", re.I),
    re.compile(r"<meta[^>]+http-equiv\s*=\s*['\"]?refresh", re.I),
]


def fetching_references(page: str) -> list[str]:
    """Every place in ``page`` that would make a browser fetch something (empty for a self-contained page)."""
    return [m.group(0) for pattern in _FETCHING for m in pattern.finditer(page)]


# The shape of a step's ``targets`` (docs/results-schema.md, "Per-target breakdown").
TARGETS = [
    {"target": "GET http://127.0.0.1:8080/data", "weight": 3, "requests": 1500, "ok": 1491,
     "errors": {"http_5xx": 7, "reset": 2}, "codes": {"200": 1491, "503": 7},
     "latency_ms": {"p50": 3.0, "p90": 5.0, "p99": 12.5, "p999": 20.0, "max": 25.0, "mean": 3.2}},
    {"target": "POST http://127.0.0.1:8080/echo", "weight": 1, "requests": 480, "ok": 480,
     "errors": {}, "codes": {"200": 480},
     "latency_ms": {"p50": 2.0, "p90": 3.0, "p99": 9.75, "p999": 10.0, "max": 11.0, "mean": 2.1}},
]


def result_with_targets(targets: Any = None) -> RunResult:
    """fixed_result() with its knee on step 1, which breaks down over two targets (1500 + 480 = its 1980)."""
    result = fixed_result()
    result.knee = dict(result.knee, step=1)
    result.steps[1].targets = TARGETS if targets is None else targets
    return result


@pytest.mark.parametrize(
    "snippet",
    [
        '<script src="https://cdn.example.com/plotly.js"></script>',
        '<link rel="stylesheet" href="https://cdn.example.com/a.css">',
        '<img src="http://example.com/a.png">',
        "<img src=//example.com/a.png>",
        '<div style="background: url(https://example.com/b.png)"></div>',
        "<style>@import 'https://example.com/c.css';</style>",
        '<svg><image xlink:href="https://example.com/d.png"/></svg>',
        '<iframe srcdoc="x"></iframe>',
    ],
)
def test_the_self_containment_check_catches_fetches(snippet: str) -> None:
    """The static check finds each way a page could pull something from the network."""
    assert fetching_references(f"<html><body>{snippet}</body></html>")


def test_report_html_is_one_self_contained_page() -> None:
    """The page fetches nothing: no script, link, external src/href or CSS url(); its figure is inline SVG."""
    page = render_html(result_with_targets())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert fetching_references(page) == []
    assert "<script" not in page
    assert page.count("<svg") == 1 and "<img" not in page
    assert page.count("<!DOCTYPE") == 1 and "<?xml" not in page and "<metadata>" not in page  # SVG's prologue gone


def test_report_html_has_the_table_knee_notes_and_the_client_server_view() -> None:
    """Every step's row, the knee and its step, errors, SLO verdicts, the saturation warning, client vs server."""
    page = render_html(result_with_targets())
    for cell in ("<td>400.0</td>", "<td>310.0</td>", "<td>123.46</td>", "<td>101.5</td>", "<td>-18.00</td>"):
        assert cell in page
    assert "knee: 198.0 rps at p99 12.00 ms (achieved &gt;= 0.98 x offered and p99 &lt;= 15 ms)" in page
    assert "The knee is step 1 (offered 200 rps)." in page
    assert "SLO p99&lt;50ms: FAIL (measured 123.456)" in page
    assert "WARNING: generator saturated at step 2" in page
    assert "the server accepted 101.5 and closed 99.2 connections/s" in page


def test_per_target_section_with_its_reconciliation() -> None:
    """A step with a per-target breakdown gets a row per target and a line saying its counts add up."""
    page = render_html(result_with_targets())
    section = page[page.index("Per target</h2>"):]
    assert "step 1 (offered 200 rps)" in section
    assert '<td class="name">POST http://127.0.0.1:8080/echo</td><td>1</td><td>480</td>' in section
    assert "<td>9.75</td>" in section and "<td>1491</td>" in section and "<td>200=1491 503=7</td>" in section
    assert "Reconciled: the 2 targets add up to the step&#x27;s totals (requests 1,980 of 1,980, ok 1,971 of 1,971, errors 9 of 9)." in section


def test_targets_that_do_not_add_up_are_flagged() -> None:
    """Per-target counts that miss requests say so, in a warning."""
    step = result_with_targets().steps[1]
    short = [TARGETS[0], dict(TARGETS[1], requests=470, ok=470)]
    assert reconcile(step, [("a", short[0]), ("b", short[1])]).startswith(
        "NOT reconciled: the 2 targets add up to requests 1,970 of 1,980, ok 1,961 of 1,971, errors 9 of 9")
    page = render_html(result_with_targets(short))
    assert '<p class="warn">NOT reconciled' in page


def test_a_result_without_targets_has_no_per_target_section() -> None:
    assert "Per target" not in render_html(fixed_result())


def test_untrusted_text_is_escaped() -> None:
    """A target URL is text on the page, never markup."""
    page = render_html(make_run([step_with(100.0, 100.0, 2.0, 5.0)], target='http://h/"><script>x()</script>'))
    assert "<script>" not in page and "&lt;script&gt;x()&lt;/script&gt;" in page


def test_compare_report_html(document: dict) -> None:  # noqa: F811 - the fixture
    """compare's page: self-contained, the knee and accepted-vs-done tables, findings, plots, every sweep."""
    page = build_html_report(document)
    assert fetching_references(page) == []
    assert "<td class=\"name\">threads-pbkdf2-close</td>" in page and "<td>440.0</td>" in page
    assert "Accepted vs done past the knee" in page and "<strong>inline</strong> at 345.0 rps offered" in page
    assert "failed: processes-pbkdf2-keep-alive: exited 2" in page
    assert "<h2>How many cores can one reactor feed</h2>" in page  # report.md's section, as HTML
    assert '<th class="name">configuration</th><th>cores</th>' in page
    with_result = [e for e in document["configurations"] if e.get("result")]
    assert page.count("<svg") == 2 + len(with_result)  # latency, overload, and one sweep plot per configuration
    assert page.count("<h4>Knee</h4>") == len(with_result)


def test_markdown_sections_become_html() -> None:
    """A report.md section written once (headings, prose, a pipe table, bullets) reads the same in the page."""
    from loadgen.lib.compare_report import _markdown_html

    html = "".join(_markdown_html([
        "", "## A section", "", "Some `code` and **bold** <here>.", "",
        "| name | n |", "|---|---:|", "| a | 1 |", "| b | 2 |", "", "- one", "- two",
    ]))
    assert html == (
        "<h2>A section</h2><p>Some <code>code</code> and <strong>bold</strong> &lt;here&gt;.</p>"
        '<table><thead><tr><th class="name">name</th><th>n</th></tr></thead><tbody>'
        '<tr><td class="name">a</td><td>1</td></tr><tr><td class="name">b</td><td>2</td></tr></tbody></table>'
        "<ul><li>one</li><li>two</li></ul>"
    )


def test_loadgen_report_format_html(tmp_path: Path) -> None:
    """``loadgen report FILE --format html`` prints the page, per-target tables read back from the file
    (and not repeated in the notes)."""
    path = tmp_path / "r.json"
    result_with_targets().dump(path)
    out = loadgen("report", str(path), "--format", "html").stdout
    assert out.startswith("<!DOCTYPE html>") and "<svg" in out and fetching_references(out) == []
    assert '<td class="name">POST http://127.0.0.1:8080/echo</td>' in out and "Reconciled: the 2 targets" in out
    assert "<li>  target" not in out


@pytest.mark.slow
def test_a_real_run_with_targets_is_reconciled_on_the_page(tmp_path: Path) -> None:
    """``loadgen run --targets`` against a real server, then ``report --format html``: a row per target, and
    their counts add up to the step's."""
    with Servers() as server_factory:
        server = server_factory("--delay-ms", "1")
        path = tmp_path / "t.txt"
        path.write_text(f"GET {server.url}\n\nGET {server.url}status/404\n")
        step = run_step(tmp_path, "--targets", str(path), "--rate", "100", "--duration", "0.5s")
    page = loadgen("report", str(tmp_path / "result.json"), "--format", "html").stdout
    assert fetching_references(page) == []
    assert f'<td class="name">GET {server.url}</td>' in page
    assert f'<td class="name">GET {server.url}status/404</td>' in page
    requests, ok, errors = step["requests"], step["ok"], sum(step["errors"].values())
    assert requests == 50 and errors == 25
    assert (f"Reconciled: the 2 targets add up to the step&#x27;s totals (requests {requests:,} of {requests:,}, "
            f"ok {ok:,} of {ok:,}, errors {errors:,} of {errors:,}).") in page


# -- in a real browser ---------------------------------------------------------------------------


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page itself asked the network for, from Chromium's NetLog.

    Requests made for the page carry its site (``file://``) in their network
    isolation key; the browser's own background requests (updates, time) do not.
    """
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start_job
        and "url" in e.get("params", {})
        and "file://" in e["params"].get("network_isolation_key", "")
        and not e["params"]["url"].startswith(("file:", "data:"))
    ]


def _pixels(png: Path) -> Any:
    from matplotlib import image

    return image.imread(str(png))[:, :, :3]


def _render(page: Path, out: Path) -> tuple[str, Path, list[str]]:
    """Headless Chromium on ``page``: its DOM after loading, a screenshot, and what it fetched (with name
    lookups all failing, so that nothing leaves the machine either way)."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is needed: apt-get install chromium (README's test command does)"
    shot, net_log = out / f"{page.stem}.png", out / f"{page.stem}.netlog.json"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={out / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         f"--log-net-log={net_log}", "--window-size=1200,2400", f"--screenshot={shot}", "--dump-dom",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, shot, _page_requests(net_log)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["report", "compare"])
def test_the_page_renders_in_chromium_with_its_figures_and_no_requests(
    tmp_path: Path, which: str, document: dict  # noqa: F811 - the fixture
) -> None:
    """Chromium loads the page from a file: it fetches nothing, the DOM has every figure and table, and the
    screenshot shows them (not a blank page: many colours, matplotlib's blue lines among them)."""
    page = tmp_path / f"{which}.html"
    page.write_text(render_html(result_with_targets()) if which == "report" else build_html_report(document))
    figures = page.read_text().count("<svg")
    dom, shot, requests = _render(page, tmp_path)
    assert requests == []
    assert dom.count("<svg") == figures and figures >= 1
    assert dom.count("<figure") == figures and "<table>" in dom
    pixels = _pixels(shot)
    assert pixels.shape[0] >= 2000 and pixels.shape[1] >= 1000
    assert pixels.std() > 0.05  # not a blank page
    colours = {tuple(p) for p in (pixels[::4, ::4] * 255).round().astype(int).reshape(-1, 3)}
    assert len(colours) > 50
    assert (31, 119, 180) in colours  # matplotlib's first line colour (C0): a plot was drawn


@pytest.mark.slow
def test_chromium_sees_a_page_that_fetches(tmp_path: Path) -> None:
    """The browser check is not vacuous: a page with a CDN script and image is caught, with its URLs."""
    page = tmp_path / "cdn.html"
    page.write_text(render_html(fixed_result()).replace(
        "</head>", '<script src="https://cdn.example.com/plotly.min.js"></script></head>').replace(
        "</body>", '<img src="http://img.example.org/x.png"></body>'))
    _, _, requests = _render(page, tmp_path)
    assert sorted(requests) == ["http://img.example.org/x.png", "https://cdn.example.com/plotly.min.js"]
