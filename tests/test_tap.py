"""Option parsing, config-file precedence, bad values, and the service tree (nothing listens)."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from dataserv import config, tap
from dataserv.dispatch import InlineDispatcher, ProcessDispatcher, ThreadDispatcher


def _parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_defaults() -> dict[str, str]:
    """README's option table: long option name to its default column, backticks removed."""
    text = README.read_text()
    table = text.split("\n### Options\n", 1)[1].split("\n#", 1)[0]  # up to the next heading
    rows = re.findall(r"^\| `(?:-\w/)?--([\w-]+)[^`]*` \| ([^|]+?) \|", table, re.M)
    return {name: default.strip("`") for name, default in rows}


def test_defaults_are_those_the_readme_documents() -> None:
    """Every user-facing option is in README's table, and parses to the default the table gives."""
    documented = _readme_defaults()
    assert {*config.OPTIONS, "listen", "config"} <= set(documented), sorted(documented)
    options = _parse()
    for name, default in documented.items():
        value = options[name]
        if default == "none":
            assert value is None, name
        elif default == "CPU count":
            assert value == (os.cpu_count() or 1), name
        elif name == "listen":
            assert value == [default], name
        elif isinstance(value, int | float):
            assert value == float(default), (name, value, default)
        else:
            assert value == default, (name, value, default)


def test_listen_is_repeatable() -> None:
    options = _parse("-l", "tcp:0:interface=127.0.0.1", "--listen", "tcp6:0:interface=\\:\\:1")
    assert options["listen"] == ["tcp:0:interface=127.0.0.1", "tcp6:0:interface=\\:\\:1"]


def test_inline_pool_is_one() -> None:
    assert _parse("--dispatch", "inline", "--pool-size", "8")["pool-size"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pool-size", "0"], "--pool-size must be a positive integer, got '0'"),
        (["--pool-size", "two"], "--pool-size must be a positive integer, got 'two'"),
        (["--work-ms", "-1"], "--work-ms must be a number >= 0, got '-1'"),
        (["--work-ms", "nan"], "--work-ms must be a number >= 0, got 'nan'"),
        (["--dispatch", "fibers"], "--dispatch must be one of inline, threads, processes, got 'fibers'"),
        (["--work-kind", "sha1"], "--work-kind must be one of pbkdf2, python, got 'sha1'"),
        (["--max-queue", "-3"], "--max-queue must be an integer >= 0, got '-3'"),
        (["--overload-policy", "drop"], "--overload-policy must be one of shed, pause, park, got 'drop'"),
        (["--queue-low-water", "-1"], "--queue-low-water must be an integer >= 0, got '-1'"),
        (["--max-queue", "8", "--queue-low-water", "8"], "--queue-low-water must be below --max-queue (8), got 8"),
        (["--max-queue", "8", "--queue-low-water", "9"], "--queue-low-water must be below --max-queue (8), got 9"),
        (["--queue-low-water", "2048"], "--queue-low-water must be below --max-queue (1024), got 2048"),
        (["--max-queue", "0", "--queue-low-water", "4"], "--queue-low-water 4 needs a --max-queue above 0"),
        (["--overload-policy", "pause", "--max-queue", "0"], "--overload-policy pause needs a --max-queue above 0"),
        (["--work-iterations", "0"], "--work-iterations must be a positive integer, got '0'"),
        (["--park-timeout-ms", "-5"], "--park-timeout-ms must be a number >= 0, got '-5'"),
        (["--park-timeout-ms", "0"], "--park-timeout-ms must be above 0, got 0"),
        (["--overload-policy", "shed", "--park-timeout-ms", "500"],
         "--park-timeout-ms is for --overload-policy park, not shed"),
        (["--max-queue", "0", "--park-timeout-ms", "500"], "--park-timeout-ms 500 needs a --max-queue above 0"),
        (["--work-iterations", "500", "--work-ms", "0"], "--work-iterations needs a --work-ms above 0"),
        (["--listen", "bogus:1"], "--listen: bad endpoint 'bogus:1'"),
        (["--listen", "systemd:domain=INET:index=0"], "--listen systemd:domain=INET:index=0: no such socket"),
        (["--bogus"], "option --bogus not recognized"),
        (["--config", "/nonexistent/dataserv.cfg"], "--config: cannot read /nonexistent/dataserv.cfg"),
    ],
)
def test_bad_values_exit_2_with_one_line_naming_the_option(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("twistd dataserv: " + message)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    from loadgen.lib.tls import write_self_signed

    d = tmp_path_factory.mktemp("certs")
    (d / "junk.pem").write_text("not a key\n")
    return write_self_signed(d), write_self_signed(d, ("other",), prefix="other-"), d / "junk.pem"


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("ssl:0:privateKey=/nonexistent/key.pem",
         "--listen ssl:0:privateKey=/nonexistent/key.pem: cannot read '/nonexistent/key.pem': No such file or directory"),
        ("ssl:0:privateKey={junk}", "--listen ssl:0:privateKey={junk}: its TLS key, certificate or parameters do not "
                                    "load: "),
        ("ssl:0:privateKey={other.key}:certKey={ours.cert}",
         "--listen ssl:0:privateKey={other.key}:certKey={ours.cert}: its TLS key, certificate or parameters do not "
         "load: Certificate public and private keys do not match."),
        ("unix:/tmp/dataserv.sock", "--workers 2 needs tcp:, tcp6: or ssl: endpoints, got 'unix:/tmp/dataserv.sock'"),
    ],
    ids=["missing", "not-pem", "mismatched", "unix"],
)
def test_bad_tls_files_or_an_endpoint_workers_cannot_share_exit_2_with_one_line(
        certs, listen: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An ssl: endpoint whose key or certificate does not load is one line naming --listen, exit 2, before
    anything starts (with or without --workers); --workers refuses an endpoint that is not TCP or TLS over TCP."""
    ours, other, junk = certs
    listen, message = (text.format(ours=ours, other=other, junk=junk) for text in (listen, message))
    with pytest.raises(SystemExit) as exit_info:
        _parse("--workers", "2", "--listen", listen)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("twistd dataserv: " + message), err


def test_workers_take_an_ssl_endpoint(certs) -> None:
    ours = certs[0]
    listen = f"ssl:0:interface=127.0.0.1:privateKey={ours.key}:certKey={ours.cert}"
    assert _parse("--workers", "2", "--listen", listen)["listen"] == [listen]


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "dataserv.cfg"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_config_file_sets_values_and_command_line_wins(tmp_path) -> None:
    path = _write(
        tmp_path,
        """
        [dataserv]
        dispatch = inline
        work-ms = 2.5
        work-kind = python
        listen =
            tcp:0:interface=127.0.0.1
            tcp:0:interface=127.0.0.2
        """,
    )
    options = _parse("--config", path, "--work-ms", "4")
    assert options["dispatch"] == "inline"
    assert options["work-kind"] == "python"
    assert options["work-ms"] == 4.0  # command line wins, even when it equals the default
    assert options["listen"] == ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"]
    assert _parse("-c", path, "-l", "tcp:0")["listen"] == ["tcp:0"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[dataserv]\npool-size = 0\n", "--pool-size must be a positive integer, got '0'"),
        ("[dataserv]\noverload-policy = drop\n", "--overload-policy must be one of shed, pause, park, got 'drop'"),
        ("[dataserv]\nmax-queue = 10\nqueue-low-water = 10\n", "--queue-low-water must be below --max-queue (10)"),
        ("[dataserv]\nspeed = fast\n", "unknown option 'speed'"),
        ("[other]\nx = 1\n", "has no [dataserv] section"),
        ("dispatch = inline\n", "is not a valid INI file"),
    ],
)
def test_bad_config_file(tmp_path, text: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad config file exits 2 (as a bad value on the command line does) with one line."""
    with pytest.raises(SystemExit) as exit_info:
        _parse("--config", _write(tmp_path, text))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_shipped_tap_cfg_documents_every_option_and_parses() -> None:
    """tap.cfg at the top of the checkout names every option and is a valid config."""
    path = os.path.join(os.path.dirname(__file__), "..", "tap.cfg")
    text = open(path).read()
    for name in [*config.OPTIONS, "listen"]:
        assert f"\n{name} =" in text or f"\n# {name} =" in text, name
    _parse("--config", path)


@pytest.mark.parametrize(
    ("dispatch", "cls", "pool_size"),
    [("inline", InlineDispatcher, 1), ("threads", ThreadDispatcher, 3), ("processes", ProcessDispatcher, 3)],
)
def test_service_tree(dispatch: str, cls: type, pool_size: int) -> None:
    """makeService's tree: the dispatcher first (started first, stopped last), then listeners.

    The pool has --pool-size workers (inline: always 1), and the gauge says so.
    """
    options = _parse("--dispatch", dispatch, "--pool-size", "3", "--work-ms", "1", "-l", "tcp:0", "-l", "tcp:0")
    root = tap.build(options, Clock(), CollectorRegistry())
    services = list(root)
    assert isinstance(services[0], cls)
    assert [s.name for s in services if s.name and s.name.startswith("listen")] == ["listen-0", "listen-1"]
    assert not root.running
    assert services[0].size == pool_size
    assert root.metrics.registry.get_sample_value("dataserv_work_pool_size") == pool_size
    assert root.metrics.registry.get_sample_value("dataserv_work_iterations") > 0
    assert root.metrics.registry.get_sample_value(
        "dataserv_info", {"version": "0.1.0", "dispatch": dispatch, "work_kind": "pbkdf2"}
    ) == 1


def test_work_iterations_replace_calibration() -> None:
    """--work-iterations: exactly that work, no calibration; ?work_ms= scales from it."""
    options = _parse("--work-ms", "4", "--work-iterations", "12345", "-l", "tcp:0")
    root = tap.build(options, Clock(), CollectorRegistry())
    assert root.metrics.registry.get_sample_value("dataserv_work_iterations") == 12345
    assert root.app.calibration.iterations_for(2.0) == round(12345 / 2)
    assert root.app.calibration.seconds_spent == 0.0


def test_drainer_takes_sigterm_only_while_running() -> None:
    """The drain handler replaces SIGTERM's while the service runs and gives it back when it stops."""
    import signal

    from twisted.internet import reactor

    options = _parse("--work-ms", "0", "-l", "tcp:0:interface=127.0.0.1")
    drainer = tap.build(options, reactor, CollectorRegistry()).getServiceNamed("drainer")
    before = signal.getsignal(signal.SIGTERM)
    drainer.startService()
    drainer._install()  # what callWhenRunning does once the reactor runs (a second call changes nothing)
    assert signal.getsignal(signal.SIGTERM) is not before
    drainer.stopService()
    assert signal.getsignal(signal.SIGTERM) is before
