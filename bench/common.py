"""Benchmark plumbing: servers as subprocesses on loopback, wrk runs, medians, machine facts."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ingest.leads.schemas import ConsentMethod, LeadIn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
_SERVER_PIDS: dict[str, int] = {}  # base URL → pid of the server process answering it


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Poll /readyz until the server answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{base_url} did not become ready")


@contextmanager
def server(args: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `python -m <args>` with a --port appended; yield its base URL; stop it cleanly."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", *args, "--port", str(port)],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    _SERVER_PIDS[base_url] = process.pid
    try:
        wait_ready(base_url, process)
        yield base_url
    finally:
        del _SERVER_PIDS[base_url]
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def echo_server(workers: int = 1) -> Any:
    """The bare FastAPI echo baseline, served by uvicorn like our API (as many worker processes, no access log)."""
    return server(
        [
            "uvicorn",
            "bench.echo_app:app",
            "--no-access-log",
            "--log-level",
            "warning",
            "--workers",
            str(workers),
        ]
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process and its live children (uvicorn's worker processes) have used so far (None
    where /proc is not available)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(int(child)) or 0.0 for child in children)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews every figure)."""
    return [round(value, 2) for value in os.getloadavg()]


def run_wrk(
    url: str,
    script: Path,
    *,
    connections: int = 32,
    seconds: int = 10,
    threads: int = 2,
    server_cpu: bool = False,
    also_cpu: dict[str, int] | None = None,
) -> dict[str, float]:
    """One wrk run: requests/s, latency percentiles in ms, completed and non-2xx counts, and wrk's own CPU per
    request.

    With `server_cpu`, also the CPU time the server process (one started by `server`) used per completed request:
    unlike requests/s it hardly depends on what else the machine is running. `also_cpu` names other processes
    (with their children) whose CPU per request is reported as `<name>_cpu_ms_per_request` (the PostgreSQL server).
    """
    pid = (
        next((pid for base, pid in _SERVER_PIDS.items() if url.startswith(base)), None)
        if server_cpu
        else None
    )
    cpu_before = cpu_seconds(pid) if pid is not None else None
    others_before = {name: cpu_seconds(other) for name, other in (also_cpu or {}).items()}
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    latency = {p: _ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", output, re.MULTILINE)}
    result = {
        "rps": rps,
        "p50_ms": latency["50"],
        "p90_ms": latency["90"],
        "p99_ms": latency["99"],
        "completed": done,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
    }
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime)
    if done:
        result["wrk_cpu_ms_per_request"] = round(wrk_cpu * 1000 / done, 3)
    for name, other in (also_cpu or {}).items():
        after, before = cpu_seconds(other), others_before[name]
        if after is not None and before is not None and done:
            result[f"{name}_cpu_ms_per_request"] = round((after - before) * 1000 / done, 3)
    cpu_after = cpu_seconds(pid) if pid is not None else None
    if cpu_before is not None and cpu_after is not None and done:
        result["server_cpu_ms_per_request"] = round((cpu_after - cpu_before) * 1000 / done, 3)
        result["load_average_1m"] = load_average()[0]
    return result


def median_of(runs: list[dict[str, float]], key: str) -> float:
    """Median of one measure over repeated runs."""
    return float(statistics.median(run[key] for run in runs))


def machine() -> str:
    """A one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()}"


def save(name: str, result: dict[str, Any]) -> Path:
    """Write a result as JSON under bench/results, stamped with date, machine and load average."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "load_average": load_average(),
    }
    result = stamp | result
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def synthetic_lead(number: int, *, consent_version: str = "1.0") -> LeadIn:
    """A synthetic buyer who agreed to everything (example.com address, a made-up phone), as the checkout sends."""
    return LeadIn(
        full_name=f"Bench Buyer {number}",
        email=f"bench.buyer.{number}@example.com",
        phone="+351912345678",
        utm_source="instagram",
        utm_medium="social",
        utm_campaign="lisbon-launch",
        utm_content="hero-cta",
        marketing_consent=True,
        analytics_consent=True,
        consent_method=ConsentMethod.MODAL,
        consent_version=consent_version,
    )
