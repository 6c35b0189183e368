"""The result file of SPEC.md as dataclasses, so every command reads and writes one schema."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadgen import __version__

ERROR_KINDS = ("connect_refused", "connect_timeout", "tls", "reset", "timeout", "status", "http_5xx", "http_4xx",
               "other")
MODELS = ("open", "closed")
CONNECTIONS = ("keep-alive", "close")
GENERATOR_KEYS = ("schedule_lag_ms_p99", "cpu_percent", "saturated")
SERVER_KEYS = (
    "accepted_per_s",
    "done_per_s",
    "open_connections_max",
    "listen_backlog_max",
    "work_queue_depth_max",
    "shed_per_s",
)


def now_iso(at: float | None = None) -> str:
    """The current time (or epoch seconds ``at``) as a result file's ``started_at``: ISO 8601, UTC, to the
    second."""
    moment = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return moment.isoformat(timespec="seconds")


@dataclass(kw_only=True)
class StepResult:
    """One step of a run (one rate or concurrency held for a duration); SPEC keys plus optional extras."""

    offered_rps: float | None
    concurrency: int | None
    duration_s: float
    requests: int
    ok: int
    errors: dict[str, int]
    achieved_rps: float
    latency_ms: dict[str, float]
    service_time_ms: dict[str, float]
    connect_ms: dict[str, float] | None
    generator: dict[str, Any]
    server: dict[str, Any] | None
    histogram: str
    # Extras (not in SPEC's minimum): written only when set.
    service_histogram: str | None = None
    connect_histogram: str | None = None
    connections_opened: int | None = None
    timeseries: list[Any] | None = None
    refined: bool | None = None  # a step of sweep --refine's bisection, not of the grid
    codes: dict[str, int] | None = None  # responses by HTTP status code
    targets: list[dict[str, Any]] | None = None  # per-target breakdown of a mix of targets
    tls_handshake_ms: dict[str, float] | None = None  # TLS, Connection: close: the handshakes' summary
    tls_handshake_histogram: str | None = None
    retried_stale: int | None = None  # keep-alive: requests resent once after their reused connection closed unanswered

    @property
    def error_count(self) -> int:
        """Failed requests of every kind together."""
        return sum(self.errors.values())

    @property
    def saturated(self) -> bool:
        """Whether the generator could not keep the schedule, so latencies describe it as much as the server."""
        return bool(self.generator.get("saturated", False))

    def to_dict(self) -> dict[str, Any]:
        """The step as a JSON-ready dict: every SPEC key, and the extras that are set."""
        data = asdict(self)
        for name in _STEP_EXTRAS:
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        """Build a step from a result file's dict; missing SPEC keys raise ValueError, unknown keys are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"a step must be an object, got {type(data).__name__}")
        missing = [name for name in _STEP_REQUIRED if name not in data]
        if missing:
            raise ValueError(f"step is missing {', '.join(missing)}")
        for name, kinds in _STEP_TYPES.items():
            if not isinstance(data[name], kinds) or isinstance(data[name], bool) and bool not in kinds:
                raise ValueError(f"step {name} has the wrong type ({type(data[name]).__name__})")
        return cls(**{name: data.get(name) for name in _STEP_REQUIRED + _STEP_EXTRAS})


_STEP_EXTRAS = ("service_histogram", "connect_histogram", "connections_opened", "timeseries", "refined",
                "codes", "targets", "tls_handshake_ms", "tls_handshake_histogram", "retried_stale")
_STEP_REQUIRED = tuple(f.name for f in fields(StepResult) if f.name not in _STEP_EXTRAS)
_NUMBER = (int, float)
_STEP_TYPES: dict[str, tuple[type, ...]] = {
    "offered_rps": (*_NUMBER, type(None)),
    "concurrency": (int, type(None)),
    "duration_s": _NUMBER,
    "requests": (int,),
    "ok": (int,),
    "errors": (dict,),
    "achieved_rps": _NUMBER,
    "latency_ms": (dict,),
    "service_time_ms": (dict,),
    "connect_ms": (dict, type(None)),
    "generator": (dict,),
    "server": (dict, type(None)),
    "histogram": (str,),
}


@dataclass(kw_only=True)
class RunResult:
    """A whole run or sweep: what was aimed at, how, and the steps; knee and SLO verdicts when computed."""

    tool: str = "loadgen"
    version: str = __version__
    target: str
    model: str
    connection: str
    started_at: str
    steps: list[StepResult] = field(default_factory=list)
    knee: dict[str, Any] | None = None
    slo: list[dict[str, Any]] = field(default_factory=list)
    insecure: bool = False  # --insecure: TLS certificates were not verified (written only when true)
    tls_groups: str | None = None  # --tls-groups: the key exchange groups offered (written only when given)

    @property
    def knee_step(self) -> StepResult | None:
        """The knee's step (the knee records its index in ``steps``); None without a knee or an index."""
        index = (self.knee or {}).get("step")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(self.steps):
            return self.steps[index]
        return None

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict in SPEC's key order."""
        return {
            "tool": self.tool,
            "version": self.version,
            "target": self.target,
            "model": self.model,
            "connection": self.connection,
            "started_at": self.started_at,
            "steps": [step.to_dict() for step in self.steps],
            "knee": self.knee,
            "slo": list(self.slo),
            **({"insecure": True} if self.insecure else {}),
            **({"tls_groups": self.tls_groups} if self.tls_groups is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """Build a result from a parsed result file, checking the keys and enumerations SPEC fixes."""
        if not isinstance(data, dict):
            raise ValueError(f"a result must be a JSON object, got {type(data).__name__}")
        if data.get("tool") != "loadgen":
            raise ValueError(f"not a loadgen result (tool is {data.get('tool')!r})")
        missing = [key for key in ("target", "model", "connection", "started_at", "steps") if key not in data]
        if missing:
            raise ValueError(f"result is missing {', '.join(missing)}")
        if data["model"] not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {data['model']!r}")
        if data["connection"] not in CONNECTIONS:
            raise ValueError(
                f"connection must be one of {', '.join(CONNECTIONS)}, got {data['connection']!r}"
            )
        if not isinstance(data["steps"], list):
            raise ValueError("steps must be a list")
        steps = []
        for index, step in enumerate(data["steps"]):
            try:
                steps.append(StepResult.from_dict(step))
            except ValueError as exc:
                raise ValueError(f"step {index}: {exc}") from None
        return cls(
            version=str(data.get("version", "")),
            target=data["target"],
            model=data["model"],
            connection=data["connection"],
            started_at=data["started_at"],
            steps=steps,
            knee=data.get("knee"),
            slo=list(data.get("slo") or []),
            insecure=data.get("insecure") is True,
            tls_groups=data["tls_groups"] if isinstance(data.get("tls_groups"), str) else None,
        )

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write the result as JSON, atomically, so a crash never leaves half a file behind."""
        target = Path(path)
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a result file is for sharing
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunResult:
        """Read a result file; any problem raises a one-line ValueError naming the file."""
        try:
            with open(path, encoding="utf-8") as source:
                data = json.load(source)
            return cls.from_dict(data)
        except OSError as exc:
            raise ValueError(f"{os.fspath(path)}: cannot read: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{os.fspath(path)}: not JSON: {exc.msg} at line {exc.lineno}") from None
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{os.fspath(path)}: {str(exc).splitlines()[0]}") from None
