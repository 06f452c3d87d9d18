"""`attribution demo` end to end (small scenario), the two notebooks run against it, and Ctrl-C."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nbformat
import pytest
from nbclient import NotebookClient

from cli.demo import DemoPaths
from sandbox.scenario import GroundTruth

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOK_NAMES = (
    "01_attribution_explore.ipynb",
    "02_replay_failed_deliveries.ipynb",
    "03_reconcile_systems_records.ipynb",
)
DEMO_LEADS = 12
READY_LINE = "Ctrl-C stops everything."
START_TIMEOUT_SECONDS = 150
STOP_TIMEOUT_SECONDS = 30
CELL_TIMEOUT_SECONDS = 120


@dataclass
class DemoProcess:
    """`attribution demo` as a child in its own process group (as in a terminal), with its output collected."""

    data_dir: Path
    args: list[str]
    process: subprocess.Popen[str] = field(init=False)
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str] = field(default_factory=queue.Queue)

    def start(self) -> DemoProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "demo", "--data-dir", str(self.data_dir), *self.args],
            env={**os.environ, "COLUMNS": "250"},  # rich wraps at 80 columns without a terminal
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(READY_LINE, START_TIMEOUT_SECONDS)
        return self

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line)

    def wait_for(self, text: str, timeout: float) -> None:
        """Collect output until a line holds `text`; fail with the output so far if it never comes."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.process.poll() is not None and self._queue.empty()):
                pytest.fail(f"`attribution demo` never printed {text!r}:\n{self.output}")
            try:
                self.lines.append(self._queue.get(timeout=min(remaining, 0.5)))
            except queue.Empty:
                continue

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def url(self, label: str) -> str:
        """The URL printed after `label`."""
        line = next(line for line in self.lines if line.startswith(label))
        return line.split()[len(label.split())]

    def env(self) -> dict[str, str]:
        """The variables it wrote for other terminals (data/demo/demo.env)."""
        pairs = (line.split("=", 1) for line in (self.data_dir / "demo.env").read_text().splitlines())
        return {name: value for name, value in pairs}

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it to the foreground process group; the exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        code = self.process.wait(STOP_TIMEOUT_SECONDS)
        self.wait_for("demo stopped", 5)
        return code

    def kill(self) -> None:
        """After a failed test: Ctrl-C, then SIGKILL to its group; its children, each in a session of its own,
        follow it (the parent-death signal of cli/orphan_guard.py, localstripe's stdin closing)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT_SECONDS)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoProcess]:
    """One demo with a small scenario for the module; the last test stops it."""
    args = ["--leads", str(DEMO_LEADS), "--api-port", "0", "--dashboard-port", "0", "--reset"]
    running = DemoProcess(tmp_path_factory.mktemp("demo"), args).start()
    try:
        yield running
    finally:
        running.kill()


def children_of(pid: int) -> list[int]:
    """The processes whose parent is pid, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)": state, ppid, ...
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def gone(pid: int) -> bool:
    """Whether the process has exited (a zombie nobody reaped counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def refused(url: str) -> bool:
    """Whether nothing answers at url any more."""
    try:
        httpx.get(url, timeout=2)
    except httpx.TransportError:
        return True
    return False


def test_demo_serves_the_dashboard_the_api_docs_and_the_checkout(demo: DemoProcess) -> None:
    dashboard, docs, checkout = demo.url("Dashboard"), demo.url("API docs"), demo.url("Demo checkout")
    assert httpx.get(f"{dashboard}/_stcore/health", timeout=5).status_code == 200
    assert httpx.get(docs, timeout=5).status_code == 200
    assert httpx.get(checkout, timeout=5).status_code == 200
    assert f"generated {DEMO_LEADS} leads in" in demo.output
    assert "(about 1 min on two cores" in " ".join(demo.output.split())  # the estimate, filled in
    env = demo.env()
    assert env["ATTRIBUTION_DB_PATH"] == str(
        demo.data_dir / "attribution.duckdb"
    )  # never the user's database
    truth = GroundTruth.load(Path(env["ATTRIBUTION_DB_PATH"]))
    answer = httpx.get(
        f"{env['ATTRIBUTION_API_URL']}/v1/metrics/success",
        headers={"Authorization": f"Bearer {env['ATTRIBUTION_ADMIN_TOKEN']}"},
        timeout=30,
    ).json()
    assert {item["metric"]: (item["numerator"], item["denominator"]) for item in answer} == truth.expected()
    for metric in truth.expected():
        assert metric in demo.output  # the printed summary


def test_notebooks_are_committed_without_outputs() -> None:
    for name in NOTEBOOK_NAMES:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code and all(not cell.outputs and cell.execution_count is None for cell in code), name


def test_the_notebooks_run_clean_against_the_demo(demo: DemoProcess) -> None:
    env = {**os.environ, **demo.env()}
    headers = {"Authorization": f"Bearer {env['ATTRIBUTION_ADMIN_TOKEN']}"}
    api = env["ATTRIBUTION_API_URL"]
    dead_before = httpx.get(f"{api}/v1/admin/deliveries", params={"status": "dead"}, headers=headers).json()
    assert dead_before["deliveries"]  # the scenario's rejection phases leave dead letters to replay
    for name in NOTEBOOK_NAMES:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        client = NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT_SECONDS,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOKS)}},
        )
        client.execute(env=env)  # raises CellExecutionError on the first failing cell
        errors = [
            out for cell in notebook.cells for out in cell.get("outputs", []) if out.output_type == "error"
        ]
        assert not errors, (name, errors)
    dead_after = httpx.get(f"{api}/v1/admin/deliveries", params={"status": "dead"}, headers=headers).json()
    assert dead_after["deliveries"] == []  # notebook 02 replayed them and they arrived


def test_ctrl_c_stops_everything(demo: DemoProcess) -> None:
    env = demo.env()
    dashboard = demo.url("Dashboard")
    children = children_of(demo.process.pid)  # the API, the dashboard and localstripe
    assert len(children) == 3
    # Each in a session of its own: the terminal's Ctrl-C reaches only the demo, which stops them in order.
    assert all(os.getsid(child) == child for child in children)
    assert demo.interrupt() == 0
    assert "stopped unexpectedly" not in demo.output
    assert refused(f"{env['ATTRIBUTION_API_URL']}/healthz") and refused(f"{dashboard}/_stcore/health")
    # Nothing is left in the demo's process group, nor in any child's.
    for group in (demo.process.pid, *children):
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)
    # The data stays for the next run, complete: a second run reuses it (see test_demo_data.py).
    assert DemoPaths(demo.data_dir).complete()


def test_a_demo_child_stops_when_the_demo_is_killed(tmp_path: Path) -> None:
    code = (
        "import os, sys, time; from pathlib import Path; from cli.demo import Child; "
        "child = Child('sleeper', [sys.executable, '-c', 'import time; time.sleep(60)'], os.environ, "
        f"Path({str(tmp_path / 'sleeper.log')!r})); print(child.process.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert (
            os.getsid(child) == child
        )  # out of the demo's group, so SIGKILL to the demo does not reach it...
    finally:
        parent.kill()  # ... a demo that cannot clean up
        parent.wait()
    deadline = time.monotonic() + 10
    while not gone(child):
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the demo's child outlived the demo")
        time.sleep(0.1)
