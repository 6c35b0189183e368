"""Live progress on a terminal with rich; silent when output is not a TTY."""

from __future__ import annotations

from typing import Any


class Progress:
    """Shows the current step, achieved rate, p99 so far and errors, refreshed each second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._live: Any = None
        self._label = ""

    def start_step(self, index: int, total: int, plan: Any) -> None:
        if not self.enabled:
            return
        load = f"{plan.offered_rate:g} rps" if plan.model == "open" else f"concurrency {plan.concurrency}"
        self._label = f"step {index}/{total}: {load}, {plan.connection}"
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            self._live = Live("", console=Console(stderr=True), refresh_per_second=4, transient=True)
            self._live.start()
        self._live.update(f"{self._label} starting")

    def update(self, snapshot: dict[str, Any]) -> None:
        if self._live is None:
            return
        self._live.update(
            f"{self._label}  {snapshot['elapsed_s']:.0f}/{snapshot['duration_s']:.0f} s  "
            f"achieved {snapshot['achieved_rps']:.1f} rps  p99 {snapshot['p99_ms']:.1f} ms  "
            f"errors {snapshot['errors']}  in flight {snapshot['in_flight']}"
        )

    def end_step(self, step: Any) -> None:
        if self._live is None:
            return
        self._live.console.print(
            f"{self._label}: achieved {step.achieved_rps:.1f} rps, p99 {step.latency_ms['p99']:.2f} ms, "
            f"errors {sum(step.errors.values())}"
        )

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
