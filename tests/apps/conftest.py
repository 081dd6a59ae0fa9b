from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import NatsServer, Processes  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    """The processes this test starts: all stopped at teardown, whatever happened. When the test failed,
    the end of each process's log is printed."""
    processes = Processes(tmp_path / "logs")
    try:
        yield processes
    finally:
        processes.stop_all()
        failed = getattr(request.node, "report_call", None)
        if failed is not None and failed.failed:
            for log in sorted(processes.logs.glob("*.log")):
                print(f"----- {log.name} (last 3000 characters)\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def nats(procs: Processes, tmp_path: Path) -> NatsServer:
    return NatsServer(tmp_path / "nats", procs)
