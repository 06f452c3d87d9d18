"""`attribution dashboard` (Streamlit over the replica) and `attribution demo` (everything, seeded, on loopback).

The demo runs each piece the way a deployment does: the sandbox fakes of MailerLite / CRM / sGTM / Meta and
localstripe (`sandbox`), the API as an `attribution serve` child process (the database's one writer, with its delivery
worker and replica publisher), and the dashboard as a `streamlit run` child process reading the replica. It then
drives the scenario generator (`sandbox.scenario`) through the API over HTTP and shows its progress. Its data lives
under data/demo/ (never the configured ATTRIBUTION_DB_PATH), so a demo cannot clobber a real database; a second
run reuses that data or resets it (`--reuse` / `--reset`, asked when run from a terminal).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Annotated, Any

import httpx
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cli.common import console, settings_or_exit
from ingest.reconcile.models import ModelParams
from ingest.reconcile.report import percent
from sandbox import LocalStripe, Sandbox
from sandbox.scenario import (
    SCENARIO_API_SETTINGS,
    VISITORS,
    WEBHOOK_EVENTS,
    WEBHOOK_ID,
    GroundTruth,
    ScenarioEnvironment,
    ScenarioError,
    ScenarioSpec,
    run_scenario,
    truth_path,
)

DASHBOARD_APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
ORPHAN_GUARD = Path(__file__).resolve().with_name("orphan_guard.py")
DEMO_DIR = Path("data/demo")
DB_NAME = "attribution.duckdb"
REPLICA_NAME = "attribution.replica.duckdb"
ENV_FILE_NAME = "demo.env"
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.5
LOG_TAIL_CHARS = 2000
# The HTTP scenario, whole run, per lead, on two cores: 2,000 leads took 198 s when quiet, 410 s at load ~5 (README).
SECONDS_PER_LEAD = 0.1


class DemoError(Exception):
    """A piece of the demo did not start or stopped; the message says which and where its log is."""


# --- child processes ------------------------------------------------------------------------------------------


def streamlit_argv(host: str, port: int) -> list[str]:
    """`streamlit run dashboard/app.py` on host:port, headless, without telemetry or a file watcher."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(DASHBOARD_APP),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


class Child:
    """A child process logging to a file, in a session (and process group) of its own.

    Not in the demo's group: a terminal signals its whole foreground group at once, in no particular order, so a
    child would see Ctrl-C as soon as the demo does and stop on its own (Streamlit exits 0), and the demo could not
    stop the pieces in order or tell that stop from a crash. Only the demo hears the terminal; it stops its children
    with stop(). On Linux each child also gets SIGTERM from the kernel if the demo dies without cleaning up
    (SIGKILL, a crash): see cli/orphan_guard.py.
    """

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        if sys.platform == "linux":
            argv = [sys.executable, "-P", str(ORPHAN_GUARD), str(os.getpid()), *argv]
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed module arguments
            argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.process.poll() is None

    def wait_until_ready(self, url: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Poll url until it answers 200; DemoError (with the log tail) if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise DemoError(
                        f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise DemoError(f"{self.name} did not answer {url} within {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The end of its log."""
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text[-LOG_TAIL_CHARS:]

    def stop(self) -> None:
        """SIGTERM to its process group, then SIGKILL if it does not stop in time; safe to call twice."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT_SECONDS)
        self._log.close()

    def _signal_group(self, signum: signal.Signals) -> None:
        # Its group is its own (the child leads its session): whatever it started stops with it. The group is
        # gone if the child exited, leaving nothing in it, since alive() was asked.
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


def port_or_free(host: str, wanted: int) -> int:
    """`wanted` if it can be bound on host now, else one the OS picks (0 always picks)."""
    for port in (wanted, 0) if wanted else (0,):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise DemoError(f"no free port on {host}")


# --- attribution dashboard ------------------------------------------------------------------------------------


def dashboard(
    port: Annotated[int, typer.Option(help="TCP port of the dashboard.")] = 8501,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Run the Streamlit dashboard over the read replica the API publishes (Ctrl-C stops it)."""
    settings = settings_or_exit()
    console.print(
        f"dashboard on http://{host}:{port}  ·  reading {settings.attribution_replica_path}  ·  "
        f"replay through {settings.attribution_api_url}"
    )
    process = subprocess.Popen(streamlit_argv(host, port))  # noqa: S603 - fixed argv
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait(STOP_TIMEOUT_SECONDS)
        code = 0
    raise typer.Exit(code)


# --- attribution demo -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPaths:
    """Where one demo keeps its data."""

    root: Path

    @property
    def database(self) -> Path:
        """The demo API's database."""
        return self.root / DB_NAME

    @property
    def replica(self) -> Path:
        """The replica the demo API publishes and the dashboard reads."""
        return self.root / REPLICA_NAME

    @property
    def env_file(self) -> Path:
        """The variables another terminal needs to talk to this demo (written at start)."""
        return self.root / ENV_FILE_NAME

    def complete(self) -> bool:
        """Whether a previous run generated its data to the end (the ground truth is written last)."""
        return self.database.exists() and truth_path(self.database).exists()

    def reset(self) -> None:
        """Delete the demo's own files (and nothing else in the folder)."""
        for pattern in (f"{DB_NAME}*", f"{REPLICA_NAME}*", "*.log", ENV_FILE_NAME):
            for path in self.root.glob(pattern):
                path.unlink(missing_ok=True)


def choose_reuse(paths: DemoPaths, reset: bool | None) -> bool:
    """Whether to keep the previous demo data: the flag if given, else ask on a terminal, else reuse."""
    if not paths.database.exists():
        return False
    if not paths.complete():
        console.print(
            "[yellow]the previous demo stopped before its data was complete: starting over[/yellow]"
        )
        return False
    if reset is not None:
        return not reset
    if sys.stdin.isatty():
        return typer.confirm(f"Demo data from a previous run is in {paths.root}/. Reuse it?", default=True)
    console.print(f"reusing the demo data in {paths.root}/ (no terminal to ask; --reset starts over)")
    return True


def demo_params() -> ModelParams:
    """What the demo API runs under: consent gate on, CRM lead capture on, every destination configured."""
    return ModelParams(
        require_consent=True,
        crm_enable_lead_capture=True,
        mailerlite_enabled=True,
        crm_enabled=True,
        sgtm_enabled=True,
        meta_enabled=True,
    )


def api_environment(
    paths: DemoPaths, api_url: str, token: str, sandbox: Sandbox, stripe: LocalStripe
) -> dict[str, str]:
    """The environment of the demo's API and dashboard: demo data, the fakes, localstripe, fast schedules."""
    env = dict(os.environ)
    env.update({name.upper(): str(value).lower() if isinstance(value, bool) else str(value)
                for name, value in SCENARIO_API_SETTINGS.items()})  # fmt: skip
    env.update(sandbox.env())
    env.update(stripe.env())
    env.update(
        {
            "ATTRIBUTION_DB_PATH": str(paths.database),
            "ATTRIBUTION_REPLICA_PATH": str(paths.replica),
            "ATTRIBUTION_API_URL": api_url,
            "ATTRIBUTION_ADMIN_TOKEN": token,
            "ATTRIBUTION_DEMO": "true",
            "ATTRIBUTION_LOG_LEVEL": "WARNING",
            "REQUIRE_CONSENT": "true",
            "CRM_ENABLE_LEAD_CAPTURE": "true",
        }
    )
    return env


def write_env_file(paths: DemoPaths, env: Mapping[str, str]) -> None:
    """Save what `attribution report`, `attribution replay` and the notebooks need to reach this demo."""
    names = (
        "ATTRIBUTION_DB_PATH",
        "ATTRIBUTION_REPLICA_PATH",
        "ATTRIBUTION_API_URL",
        "ATTRIBUTION_ADMIN_TOKEN",
        # Where the sandbox fakes listen: notebook 02 checks (and clears) their fault injection.
        "MAILERLITE_BASE_URL",
        "CRM_WEBHOOK_URL",
        "SGTM_ENDPOINT",
    )
    paths.env_file.write_text("".join(f"{name}={env[name]}\n" for name in names), encoding="utf-8")
    paths.env_file.chmod(0o600)


def _status(client: httpx.Client, token: str) -> dict[str, Any]:
    response = client.get("/v1/admin/status", headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def generate(env: ScenarioEnvironment, spec: ScenarioSpec) -> tuple[GroundTruth, float]:
    """Run the scenario in a thread, with a progress bar of the leads captured and the Stripe events stored."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["truth"] = run_scenario(env, spec)
        except (ScenarioError, httpx.HTTPError, OSError) as exc:
            outcome["error"] = exc

    started = time.perf_counter()
    worker = threading.Thread(target=work, name="demo-scenario", daemon=True)
    worker.start()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with (
        Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress,
        httpx.Client(base_url=env.api_url, timeout=10) as client,
    ):
        leads = progress.add_task("leads captured", total=spec.leads)
        events = progress.add_task("Stripe events stored", total=None)
        delivered = progress.add_task("deliveries delivered", total=None)
        while worker.is_alive():
            worker.join(POLL_SECONDS)
            try:
                status = _status(client, env.admin_token)
            except httpx.HTTPError:
                continue  # a slow answer while the writer is busy: the next poll will do
            tables = status["tables"]
            progress.update(leads, completed=min(int(tables["leads"]), spec.leads))
            progress.update(events, completed=int(tables["stripe_events"]))
            by_destination = status["deliveries_by_status"].values()
            progress.update(
                delivered, completed=sum(int(counts.get("delivered", 0)) for counts in by_destination)
            )
    if "error" in outcome:
        raise DemoError(f"the scenario failed: {outcome['error']}")
    return outcome["truth"], time.perf_counter() - started


def print_metrics(api_url: str, token: str) -> None:
    """The success metrics as the API computes them now."""
    response = httpx.get(
        f"{api_url}/v1/metrics/success", headers={"Authorization": f"Bearer {token}"}, timeout=60
    )
    if response.status_code != 200:
        console.print(f"[yellow]metrics unavailable: {response.status_code}[/yellow]")
        return
    table = Table(title="Success metrics of the demo data")
    for column in ("metric", "value", "target", "met", "numerator / denominator"):
        table.add_column(column)
    for metric in response.json():
        table.add_row(
            metric["metric"],
            percent(metric["value"]),
            f"{metric['comparator']} {percent(metric['target'])}",
            "[green]yes[/green]" if metric["met"] else "[red]no[/red]",
            f"{metric['numerator']:,} / {metric['denominator']:,}",
        )
    console.print(table)


def estimate_minutes(leads: int) -> int:
    """Roughly how long the scenario takes for `leads` (measured: see the README's demo figures)."""
    return max(1, round(leads * SECONDS_PER_LEAD / 60))


def print_urls(api_url: str, dashboard_url: str, paths: DemoPaths) -> None:
    """Where to look, and how to reach the demo from another terminal."""
    console.print(
        f"\n[bold]Dashboard[/bold]      {dashboard_url}\n"
        f"[bold]API docs[/bold]       {api_url}/docs\n"
        f"[bold]Demo checkout[/bold]  {api_url}/demo/checkout   "
        f"(landing page with UTMs: {api_url}/demo?utm_source=instagram&utm_medium=social&utm_campaign=demo)\n"
        f"Other terminals: `set -a; . {paths.env_file}; set +a`, then `attribution report`, "
        "`attribution replay --dry-run`, or the notebooks.\n"
        "The fakes silently lost some records and hold a few we never issued: `attribution reconcile pull`, "
        "`attribution reconcile`, `attribution reconcile repair --dry-run` (or the Systems' records page).\n"
        f"Logs: {paths.root / 'api.log'}, {paths.root / 'dashboard.log'}"
    )


class StopRequest:
    """The first Ctrl-C, SIGTERM or hang-up stops the demo (as KeyboardInterrupt, through the clean-up); the ones
    after it are ignored, so stopping the children in order is never cut short."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler."""
        if not self.requested:
            self.requested = True
            raise KeyboardInterrupt


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Handle SIGINT, SIGTERM and SIGHUP with one StopRequest while the demo runs.

    SIGINT is handled even when inherited as ignored (a job started in the background of a script): Python then
    leaves it ignored, and Ctrl-C would stop nothing now that the children do not hear it. A hang-up that was
    ignored on purpose (nohup) stays ignored.
    """
    stop = StopRequest()
    handled = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        handled.append(signal.SIGHUP)
    previous = {signum: signal.signal(signum, stop) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def demo(
    leads: Annotated[int, typer.Option(min=10, max=100_000, help="Leads the scenario captures.")] = 2000,
    days: Annotated[int, typer.Option(min=1, max=365, help="Days the leads are spread over.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the scenario.")] = 7,
    reset: Annotated[
        bool | None,
        typer.Option(
            "--reset/--reuse",
            help="Start the demo data over, or keep the previous run's (default: ask; without a terminal, reuse).",
        ),
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its data.")] = DEMO_DIR,
    host: Annotated[str, typer.Option(help="Interface of the API and the dashboard.")] = "127.0.0.1",
    api_port: Annotated[int, typer.Option(help="API port (busy or 0: any free one).")] = 8000,
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port (busy or 0: any free one).")] = 8501,
) -> None:
    """Sandbox + API + seeded realistic funnel + dashboard on loopback; prints the URLs; Ctrl-C stops it all."""
    paths = DemoPaths(data_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    reuse = choose_reuse(paths, reset)
    if not reuse:
        paths.reset()
    try:
        with _stop_on_signals(), ExitStack() as stack:
            _run_demo(stack, paths, reuse, ScenarioSpec(seed=seed, leads=leads, days=days), host, api_port,
                      dashboard_port)  # fmt: skip
    except KeyboardInterrupt:
        console.print("\nstopping…")
    except DemoError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print("demo stopped")


def _run_demo(
    stack: ExitStack,
    paths: DemoPaths,
    reuse: bool,
    spec: ScenarioSpec,
    host: str,
    api_port: int,
    dashboard_port: int,
) -> None:
    """Start every piece (each stopped by `stack` in reverse order), seed, then wait for Ctrl-C."""
    console.print("starting the sandbox: localstripe and the MailerLite / CRM / sGTM / Meta fakes")
    sandbox = stack.enter_context(Sandbox(host))
    stripe = stack.enter_context(LocalStripe(host))
    api_url = f"http://{host}:{port_or_free(host, api_port)}"
    dashboard_url = f"http://{host}:{port_or_free(host, dashboard_port)}"
    token = secrets.token_urlsafe(24)
    env = api_environment(paths, api_url, token, sandbox, stripe)
    write_env_file(paths, env)

    console.print(
        f"starting the API on {api_url} (database {paths.database}) and the dashboard on {dashboard_url}"
    )
    api = Child(
        "the API",
        [sys.executable, "-m", "cli", "serve", "--host", host, "--port", api_url.rsplit(":", 1)[1]],
        env,
        paths.root / "api.log",
    )
    stack.callback(api.stop)
    # Started side by side: the dashboard needs no API to start (it reads the replica, and says when there is none).
    dashboard_child = Child(
        "the dashboard",
        streamlit_argv(host, int(dashboard_url.rsplit(":", 1)[1])),
        env,
        paths.root / "dashboard.log",
    )
    stack.callback(dashboard_child.stop)
    api.wait_until_ready(f"{api_url}/readyz")
    # The browser checkout's payments reach the API the way the scenario's do: localstripe's webhook.
    stripe.register_webhook(
        WEBHOOK_ID, f"{api_url}/v1/webhooks/stripe", stripe.webhook_secret, WEBHOOK_EVENTS
    )
    dashboard_child.wait_until_ready(f"{dashboard_url}/_stcore/health")

    print_urls(api_url, dashboard_url, paths)
    if reuse:
        console.print(f"\nreusing the demo data in {paths.root}/ (--reset starts over)")
    else:
        console.print(
            f"\ngenerating {spec.leads:,} leads over {spec.days} days through the API over HTTP as visitors and "
            f"Stripe would, {VISITORS} at a time (payments on localstripe, refunds, duplicate webhooks, a CRM "
            f"outage, orphan payments). It takes a while (about {estimate_minutes(spec.leads)} min on two cores; "
            "--leads 300 for a quick look): open the dashboard now, it fills in as the API publishes its replica."
        )
        scenario_env = ScenarioEnvironment(
            api_url=api_url,
            admin_token=token,
            stripe_api_base=stripe.url,
            stripe_secret_key=stripe.secret_key,
            stripe_webhook_secret=stripe.webhook_secret,
            fakes={name: sandbox.base_url(name) for name in ("mailerlite", "crm", "sgtm", "meta")},
            params=demo_params(),
            database_path=paths.database,
        )
        _truth, seconds = generate(scenario_env, spec)
        console.print(f"generated {spec.leads:,} leads in {seconds:.0f} s")
    print_metrics(api_url, token)
    console.print("\n[bold]Ctrl-C stops everything.[/bold]")
    while api.alive() and dashboard_child.alive():
        time.sleep(POLL_SECONDS)
    stopped = api if not api.alive() else dashboard_child
    raise DemoError(
        f"{stopped.name} stopped unexpectedly (code {stopped.process.returncode}):\n{stopped.log_tail()}"
    )
