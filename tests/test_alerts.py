"""The alert rules of deploy/prometheus/alerts.yml, unit-tested by promtool with alerts_test.yml.

Every rule needs a test group that fires it and one that stays quiet. So that a group cannot
pass vacuously, a firing group must fail when its rule never fires, a quiet group when its rule
always fires, and a quiet group may feed only series that its alert's firing group feeds (a
misspelt series name would keep any rule quiet). Whether a quiet group is a near miss (the
thresholds are checked from both sides) is for review and mutation, not for this file.

The files are read with a few regular expressions (PyYAML is not a dependency), which expect
the layout alerts_test.yml has: one group per alert, starting ``  - name: <alert> fires|quiet``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
TESTS = PROMETHEUS / "alerts_test.yml"

_NEVER = "vector(0) > 1"  # an expression with no result: the alert never fires
_ALWAYS = "vector(1)"  # a result at every evaluation: the alert fires once `for` has passed


def _alert_names(rules: str) -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\S+)\s*$", rules, re.M)


def _split_groups(tests: str) -> tuple[str, list[str]]:
    """The text before the first test group, and each group's text (items of ``tests:``, 2-space indented)."""
    starts = [m.start() for m in re.finditer(r"^  - ", tests, re.M)]
    assert starts, "no test groups found"
    return tests[: starts[0]], [tests[a:b] for a, b in zip(starts, [*starts[1:], len(tests)], strict=True)]


def _cases(group: str) -> list[tuple[str, bool]]:
    """(alertname, expects alerts) for each alert_rule_test case of a group."""
    chunks = re.split(r"^\s*- alertname:\s*", group, flags=re.M)[1:]
    cases = []
    for chunk in chunks:
        name = chunk.split()[0]
        fires = re.search(r"^\s*exp_alerts:\s*(#.*)?\n\s*- ", chunk, re.M) is not None
        quiet = re.search(r"^\s*exp_alerts:\s*\[\]\s*(#.*)?$", chunk, re.M) is not None
        assert fires != quiet, f"{name}: exp_alerts must be [] or a list of alerts:\n{chunk}"
        cases.append((name, fires))
    return cases


def _groups() -> list[tuple[str, str, str]]:
    """(alert, "fires" or "quiet", group text) for every group of alerts_test.yml."""
    _, groups = _split_groups(TESTS.read_text())
    found = []
    for group in groups:
        title = re.match(r"  - name:\s*(.+?)\s*$", group, re.M)
        assert title, f"a test group without a name first:\n{group}"
        cases = _cases(group)
        alerts = {name for name, _ in cases}
        assert len(alerts) == 1, f"{title[1]}: one alert per group, got {sorted(alerts)}"
        alert = alerts.pop()
        kind = "fires" if any(fires for _, fires in cases) else "quiet"
        assert title[1] == f"{alert} {kind}", f"group {title[1]!r} is a {kind!r} group of {alert}"
        found.append((alert, kind, group))
    return found


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is needed: apt-get install prometheus (.ci/run does)"
    return path


def _with_expr(rules: str, alert: str, expr: str) -> str:
    """alerts.yml with the one-line ``expr:`` of ``alert`` replaced."""
    pattern = re.compile(rf"(^\s*- alert:\s*{re.escape(alert)}\s*\n(?:(?!\s*- alert:).*\n)*?\s*expr:)(.*)$", re.M)
    match = pattern.search(rules)
    assert match and match[2].strip() not in ("|", ">", ""), f"{alert}: no one-line expr to replace"
    return rules[: match.start(2)] + f" {expr}" + rules[match.end(2):]


def _promtool_test(directory: Path, rules: str, tests: str) -> subprocess.CompletedProcess:
    directory.mkdir()
    (directory / "alerts.yml").write_text(rules)
    (directory / "alerts_test.yml").write_text(tests)
    return subprocess.run([_promtool(), "test", "rules", "alerts_test.yml"], cwd=directory,
                          capture_output=True, text=True, timeout=60)


def test_every_alert_has_a_firing_and_a_quiet_group() -> None:
    """Each rule of alerts.yml has both kinds of group, and no group tests an alert that is not a rule."""
    rules = _alert_names(RULES.read_text())
    assert len(rules) == len(set(rules)) > 0, rules
    covered = {(alert, kind) for alert, kind, _ in _groups()}
    missing = [f"{alert} {kind}" for alert in rules for kind in ("fires", "quiet") if (alert, kind) not in covered]
    assert not missing, f"alerts_test.yml has no group: {missing}"
    assert {alert for alert, _ in covered} <= set(rules), "groups for alerts that are not in alerts.yml"


def _series_names(group: str) -> set[str]:
    return set(re.findall(r"^\s*- series:\s*['\"]?([a-zA-Z_:][\w:]*)", group, re.M))


def test_quiet_groups_feed_the_series_their_firing_group_feeds() -> None:
    """A quiet group with a series its alert never reads (a misspelt name) would pass whatever the rule."""
    firing: dict[str, set[str]] = {}
    for alert, kind, group in _groups():
        if kind == "fires":
            firing.setdefault(alert, set()).update(_series_names(group))
    for alert, kind, group in _groups():
        if kind == "quiet":
            names = _series_names(group)
            assert names and names <= firing.get(alert, set()), (alert, names, firing.get(alert))


_FIRES = """
  - name: {0} fires
    alert_rule_test:
      - alertname: {0}
        eval_time: 1m
        exp_alerts: []  # pending
      - alertname: {0}
        eval_time: 5m
        exp_alerts:
          - exp_labels: {{severity: page}}
"""
_QUIET = """
  - name: {0} quiet
    alert_rule_test:
      - alertname: {0}
        eval_time: 5m
        exp_alerts: []
"""


@pytest.mark.parametrize(
    ("groups", "missing"),
    [
        ([_FIRES.format("A"), _QUIET.format("A"), _FIRES.format("B"), _QUIET.format("B")], []),
        # a firing group's pending case does not make it a quiet group
        ([_FIRES.format("A"), _QUIET.format("B")], ["A quiet", "B fires"]),
    ],
)
def test_the_coverage_check_itself(
    groups: list[str], missing: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group with a firing case counts as firing; one with only ``exp_alerts: []`` as quiet."""
    (tmp_path / "alerts.yml").write_text("groups:\n  - rules:\n      - alert: A\n      - alert: B\n")
    (tmp_path / "alerts_test.yml").write_text("rule_files: [alerts.yml]\ntests:" + "".join(groups))
    monkeypatch.setattr(f"{__name__}.RULES", tmp_path / "alerts.yml")
    monkeypatch.setattr(f"{__name__}.TESTS", tmp_path / "alerts_test.yml")
    if not missing:
        test_every_alert_has_a_firing_and_a_quiet_group()
        return
    with pytest.raises(AssertionError, match=re.escape(f"alerts_test.yml has no group: {missing}")):
        test_every_alert_has_a_firing_and_a_quiet_group()


@pytest.mark.slow
def test_promtool_passes_the_alert_unit_tests() -> None:
    result = subprocess.run([_promtool(), "test", "rules", str(TESTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("alert", "kind", "group"), [pytest.param(*g, id=f"{g[0]} {g[1]}") for g in _groups()])
def test_each_group_notices_its_rule_broken(alert: str, kind: str, group: str, tmp_path: Path) -> None:
    """A firing group fails when its rule never fires; a quiet group fails when its rule always fires.

    The group alone passes against the real rules, so the failure is the broken rule's.
    """
    header, _ = _split_groups(TESTS.read_text())
    rules = RULES.read_text()
    result = _promtool_test(tmp_path / "real", rules, header + group)
    assert result.returncode == 0, result.stdout + result.stderr
    expr = _NEVER if kind == "fires" else _ALWAYS
    result = _promtool_test(tmp_path / "broken", _with_expr(rules, alert, expr), header + group)
    assert result.returncode == 1, f"{alert} {kind}: rc {result.returncode} with expr {expr}: {result.stdout}"
    assert f"alertname: {alert}," in result.stdout + result.stderr, result.stdout + result.stderr
