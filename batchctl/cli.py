"""`batchctl`: one command line for every role: serve, worker, reconcile,
submit and watch batches, seed, migrate, and the embedded demo."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import typer
from rich.console import Console

from batchctl.watch import EXIT_TIMEOUT, exit_code, print_counts, watch_batch
from shared.contract import Action

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)

ApiUrl = typer.Option(
    "http://127.0.0.1:8000", "--url", envvar="BATCH_API_URL", help="Producer base URL."
)
ApiToken = typer.Option(..., "--token", envvar="BATCH_API_TOKEN", help="Admin API token.")
AsJson = typer.Option(False, "--json", help="Print only the result, as one JSON document.")
Timeout = typer.Option(
    None,
    "--timeout",
    min=0,
    help=f"With --watch: give up after this many seconds (exit {EXIT_TIMEOUT}).",
)
ACTIONS = "|".join(Action)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"batchctl {version('batch-actions')}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Options before any command (the app's help is the module's docstring)."""


def _print_json(document: object) -> None:
    """The one JSON document a `--json` command prints on stdout."""
    typer.echo(json.dumps(document, default=str))


def _watch(client, batch_id: int, timeout: float | None, as_json: bool) -> None:
    """Follow the batch to its end (a bar on a terminal, progress lines in a
    log or pipe), then exit with its outcome: 0 completed with no learner
    failed, 3 failures, 4 cancelled, 124 still running at --timeout."""
    from batch_actions_client import ApiError

    live = sys.stdout.isatty() and console.is_terminal
    try:
        view = watch_batch(console, client, batch_id, timeout=timeout, live=live)
    except ApiError as exc:
        _fail(exc)
    except TimeoutError as exc:
        console.print(f"[yellow]timeout:[/] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_TIMEOUT) from None
    if as_json:
        _print_json(view)
    raise typer.Exit(exit_code(view))


def _ids(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: ids are whole numbers separated by commas") from None


def _client(url: str, token: str):
    from batch_actions_client import BatchClient

    return BatchClient(url, token)


def _fail(exc: Exception) -> None:
    """One line on stderr, exit code 1: the error's text, never a traceback."""
    from rich.markup import escape

    console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(1)


@app.command()
def migrate() -> None:
    """Apply the database migrations to DATABASE_URL."""
    from batchctl.migrate import upgrade
    from shared.settings import Settings

    migrated = upgrade()
    # Plain echo: a long path must not be wrapped or read as markup.
    typer.echo(f"migrated {migrated} to the latest migration", err=True)
    if Settings().database_url == Settings.model_fields["database_url"].default:
        typer.echo("DATABASE_URL is not set: that is the embedded default", err=True)


@app.command()
def seed(
    learners: int = typer.Option(1000, min=0, help="How many learners to create."),
    groups: int = typer.Option(5, min=1, help="How many groups."),
    courses: int = typer.Option(10, min=1, help="How many courses."),
    as_json: bool = typer.Option(False, "--json", help="Print only the result as JSON."),
) -> None:
    """Create a realistic school with an admin and an API token for that admin."""
    from batchctl.seed import seed_school
    from shared import runtime

    started = time.perf_counter()
    with runtime.start().transaction() as session:
        seeded = seed_school(session, learners=learners, groups=groups, courses=courses)
    if not as_json:
        console.print(
            f"seeded school {seeded.school_id} with {learners:,} learners "
            f"in {time.perf_counter() - started:.1f}s; admin {seeded.admin_id}"
        )
    typer.echo(json.dumps(seeded.as_dict()))


token_app = typer.Typer(
    help="API tokens: issue one (needs the database), list and revoke (through the API). "
    "`batchctl token --school-id S --learner-id A` still issues one."
)
app.add_typer(token_app, name="token")


@token_app.callback(invoke_without_command=True)
def token(
    ctx: typer.Context,
    school_id: int = typer.Option(None, help="The admin's school (the old form of `issue`)."),
    learner_id: int = typer.Option(None, help="The admin's learner id (the old form of `issue`)."),
    label: str = typer.Option("", help="A note to recognise the token by."),
    read_only: bool = typer.Option(False, help="Only the batches:read scope."),
) -> None:
    """Without a subcommand, `batchctl token --school-id S --learner-id A`
    issues a token, as before the subcommands existed."""
    if ctx.invoked_subcommand is not None:
        return
    if school_id is None or learner_id is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    _issue_token(school_id, learner_id, label, read_only)


@token_app.command("issue")
def token_issue(
    school_id: int = typer.Option(..., help="The admin's school."),
    learner_id: int = typer.Option(..., help="The admin's learner id."),
    label: str = typer.Option("", help="A note to recognise the token by."),
    read_only: bool = typer.Option(False, help="Only the batches:read scope."),
) -> None:
    """Issue an API token for an admin, printed once and stored hashed.

    Audited as `token.issued` with no actor: an operator issued it."""
    _issue_token(school_id, learner_id, label, read_only)


def _issue_token(school_id: int, learner_id: int, label: str, read_only: bool) -> None:
    from sqlalchemy import select

    from producer.tokens import ALL_SCOPES, READ_SCOPE, issue_token
    from shared import runtime
    from shared.models import Learner

    with runtime.start().transaction() as session:
        admin = session.scalar(
            select(Learner).where(Learner.id == learner_id, Learner.school_id == school_id)
        )
        if admin is None or not admin.is_admin:
            _fail(ValueError(f"learner {learner_id} is not an admin of school {school_id}"))
        scopes = READ_SCOPE if read_only else ALL_SCOPES
        typer.echo(issue_token(session, school_id, learner_id, label=label, scopes=scopes))


@token_app.command("list")
def token_list(
    include_revoked: bool = typer.Option(False, help="Revoked tokens too."),
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """Your school's API tokens as JSON lines (never a secret)."""
    from batch_actions_client import ApiError

    with _client(url, api_token) as client:
        try:
            for listed in client.tokens(include_revoked=include_revoked):
                typer.echo(json.dumps(listed))
        except ApiError as exc:
            _fail(exc)


@token_app.command("revoke")
def token_revoke(
    token_id: int = typer.Argument(..., help="The token's id (from `batchctl token list`)."),
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """Revoke one of your school's tokens at once (audited as `token.revoked`)."""
    from batch_actions_client import ApiError

    with _client(url, api_token) as client:
        try:
            client.revoke_token(token_id)
        except ApiError as exc:
            _fail(exc)
    console.print(f"token {token_id} is revoked")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
) -> None:
    """Run the producer (HTTP API and dispatch loop). Without BROKER_URL (the
    embedded mode) it runs the workers and the reconciler in this process too:
    its broker is in memory, so no other process could reach it."""
    from producer.app import create_app
    from producer.app import serve as serve_api
    from shared import runtime
    from shared.settings import Settings

    settings = Settings()
    embedded = None
    if settings.broker_url:
        process = runtime.start(settings)
    else:
        from workers.embedded import Embedded
        from workers.runtime import start_worker

        process = start_worker(settings)
        embedded = Embedded(process)
    api = create_app(process)
    api.state.embedded = embedded
    try:
        if embedded is not None:
            embedded.start()
            console.print("embedded mode: workers and reconciler run in this process")
        serve_api(api, host, port)
    finally:
        if embedded is not None:
            embedded.stop()
        runtime.stop()


def _require_broker(command: str) -> None:
    """Without BROKER_URL the broker is in memory: a separate process would
    consume or publish where nobody else can see."""
    from shared.settings import Settings

    if not Settings().broker_url:
        _fail(
            ValueError(
                f"`batchctl {command}` needs a shared broker: set BROKER_URL=amqp://... "
                "(RabbitMQ). Without it, `batchctl serve` alone runs the workers and "
                "the reconciler in its own process."
            )
        )


def worker_metrics_env() -> dict[str, str]:
    """Point Dramatiq's Prometheus middleware at METRICS_HOST:METRICS_PORT and a
    multiprocess directory of this pool's own: PROMETHEUS_MULTIPROC_DIR when
    the deployment gives one (emptied, so that no series of a previous run's
    dead processes is served), else a new private directory (mode 0700,
    unpredictable name: nobody else can have placed files or links in it)."""
    import tempfile

    from shared.settings import Settings

    settings = Settings()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
    else:
        directory = tempfile.mkdtemp(prefix=f"batch-actions-metrics-{settings.metrics_port}-")
    return {
        "PROMETHEUS_MULTIPROC_DIR": directory,
        "dramatiq_prom_db": directory,
        "dramatiq_prom_host": settings.metrics_host,
        "dramatiq_prom_port": str(settings.metrics_port),
    }


@app.command()
def worker(
    processes: int = typer.Option(2, min=1, help="Worker processes."),
    threads: int = typer.Option(8, min=1, help="Threads per process."),
    queues: list[str] = typer.Option(None, "--queues", help="Only these queues (repeatable)."),
) -> None:
    """Run Dramatiq workers for the batch actions (all queues by default)."""
    from shared.contract import QUEUES

    unknown = set(queues or []) - set(QUEUES)
    if unknown:
        raise typer.BadParameter(f"unknown queues {sorted(unknown)}; known: {QUEUES}")
    _require_broker("worker")
    os.environ.update(worker_metrics_env())
    argv = dramatiq_command("--processes", str(processes), "--threads", str(threads))
    if queues:
        argv += ["--queues", *queues]
    os.execv(sys.executable, argv)


def dramatiq_command(*arguments: str) -> list[str]:
    """Dramatiq's CLI on the worker entry point (`workers.runtime:start_worker`),
    with the project's logging (workers/dramatiq_cli.py)."""
    return [
        sys.executable,
        "-m",
        "workers.dramatiq_cli",
        "workers.runtime:start_worker",
        *arguments,
        # Let a worker finish its current learner on SIGTERM.
        "--worker-shutdown-timeout",
        "60000",
        # Dramatiq starts the metrics exposition server only once every worker
        # process has booted, and gives up silently after this long (30 s by
        # default, which a loaded node exceeds): then /metrics never answers.
        "--worker-fork-timeout",
        "600000",
    ]


@app.command()
def reconcile(
    once: bool = typer.Option(False, help="Run one pass and exit."),
    as_json: bool = typer.Option(False, "--json", help="With --once: the pass's counts as JSON."),
) -> None:
    """Republish stuck items, finalize overdue deletions, complete batches."""
    _require_broker("reconcile")
    from shared import logs, runtime
    from shared.metrics import DatabaseCollector, serve_metrics
    from shared.publish import publisher_for
    from workers import reconcile as reconciler
    from workers.mail import InvitationSender

    process = runtime.start()
    settings = process.settings
    logs.configure(settings)
    sessions = process.sessions
    publisher = publisher_for(process.broker)
    sender = InvitationSender(sessions, settings, process.redis, process.progress)
    if not once:
        serve_metrics(settings.metrics_host, settings.metrics_port, [DatabaseCollector(sessions)])
    if once:
        from dataclasses import asdict

        done = reconciler.reconcile_once(sessions, publisher, settings, sender)
        if as_json:
            _print_json(asdict(done))
        else:
            console.print(done)
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    reconciler.log.info("reconciling every %ss", settings.reconcile_interval_seconds)
    reconciler.run(sessions, publisher, settings, sender, stop)


@app.command()
def submit(
    action: str = typer.Argument(..., help=ACTIONS),
    learner_ids: str = typer.Option(None, help="Comma-separated learner ids."),
    ids_file: Path = typer.Option(None, help="A file of learner ids, one per line."),
    csv_file: Path = typer.Option(
        None,
        "--csv",
        help="A CSV file whose header names an email, external_id or learner_id column "
        "(the first of these it has is read), one learner a row.",
    ),
    status: list[str] = typer.Option(None, help="Filter: invited, active, deactivated."),
    group_id: int = typer.Option(None, help="Filter: members of this group."),
    q: str = typer.Option(None, help="Filter: part of an email or name."),
    exclude_ids: str = typer.Option(None, help="With a filter: ids to leave out."),
    all_not_activated: bool = typer.Option(False, help="Every learner not yet activated."),
    group_ids: str = typer.Option(None, help="add_to_group: the groups."),
    course_ids: str = typer.Option(None, help="add_to_course: the courses."),
    dry_run: bool = typer.Option(False, help="Only count what would happen."),
    watch: bool = typer.Option(
        False, help="Follow progress until the batch ends; exit 3 on failures, 4 if cancelled."
    ),
    timeout: float = Timeout,
    yes: bool = typer.Option(
        False, "--yes", help="Deactivate or delete over a filter without asking to confirm."
    ),
    as_json: bool = AsJson,
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """Submit a batch action. To deactivate or delete over a filter it shows
    the dry run's count and asks to confirm first (--yes does not ask)."""
    from batch_actions_client import ApiError

    ids = _ids(learner_ids) + (_ids(ids_file.read_text()) if ids_file else [])
    people = {"status": status or None, "group_id": group_id, "q": q}
    people = {k: v for k, v in people.items() if v is not None}
    # One way of selecting: a flag of another would otherwise be silently ignored.
    given = {
        "--learner-ids/--ids-file": bool(learner_ids or ids_file),
        "--csv": csv_file is not None,
        "a filter (--status/--group-id/--q/--exclude-ids)": bool(people or exclude_ids),
        "--all-not-activated": all_not_activated,
    }
    chosen = [name for name, used in given.items() if used]
    if len(chosen) > 1:
        raise typer.BadParameter(
            f"{' and '.join(chosen)} select learners in different ways; use only one"
        )
    if ids:
        selection: dict = {"learner_ids": ids}
    elif csv_file is not None:
        selection = _read_csv(csv_file)
    elif all_not_activated:
        selection = {"all_not_activated": True}
    else:
        if not people:
            raise typer.BadParameter(
                "select learners: --learner-ids, --ids-file, a filter "
                "(--status/--group-id/--q), --csv FILE or --all-not-activated"
            )
        selection = {"filter": people, "exclude_ids": _ids(exclude_ids)}
    params = {}
    if group_ids:
        params["group_ids"] = _ids(group_ids)
    if course_ids:
        params["course_ids"] = _ids(course_ids)
    with _client(url, api_token) as client:
        try:
            expected = None
            if not dry_run and _needs_confirmation(action, selection):
                expected = _confirmed_count(client, action, selection, params, yes)
            view = client.submit(
                action, selection, params, dry_run=dry_run, expected_total=expected
            )
        except ApiError as exc:
            _fail(exc)
        _say_unmatched(selection, view)
        if dry_run:
            print_counts(console, view, title=f"dry run: {action} on {view['total']:,} learners")
            if as_json:
                _print_json(view)
            return
        console.print(f"batch [bold]{view['id']}[/] {action}: {view['total']:,} learners")
        if watch:
            if not as_json:
                typer.echo(json.dumps({"id": view["id"], "status": view["status"]}))
            _watch(client, view["id"], timeout, as_json)
        if as_json:
            _print_json(view)
        else:
            typer.echo(json.dumps({"id": view["id"], "status": view["status"]}))


def _read_csv(path: Path) -> dict:
    """The selection a CSV file names; one clear error (with its line) otherwise."""
    from batch_actions_client import SelectionFileError, read_selection

    try:
        with path.open(newline="", encoding="utf-8-sig") as lines:
            return read_selection(lines, name=str(path))
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from None
    except SelectionFileError as exc:
        _fail(exc)
        raise


def _say_unmatched(selection: dict, view: dict) -> None:
    """Emails or external ids that matched no learner: how many, and the first few."""
    unmatched = view.get("unmatched") or {}
    if unmatched.get("count"):
        kind = "emails" if "emails" in selection else "external ids"
        first = ", ".join(unmatched.get("first", []))
        more = " ..." if unmatched["count"] > len(unmatched.get("first", [])) else ""
        console.print(
            f"[yellow]{unmatched['count']:,} {kind} matched no learner:[/] {first}{more}",
            soft_wrap=True,
            highlight=False,
        )


def _needs_confirmation(action: str, selection: dict) -> bool:
    """Deactivate or delete over anything but explicit ids: an empty filter is
    the whole school (the API wants the confirmed count, `expected_total`)."""
    known = action in Action.__members__.values()
    explicit = {"learner_ids", "emails", "external_ids"} & selection.keys()
    return known and Action(action).destructive and not explicit


def _interactive() -> bool:
    """Whether someone can answer a question (looked up at each call: tests
    swap sys.stdin)."""
    return sys.stdin.isatty()


def _confirmed_count(client, action: str, selection: dict, params: dict, yes: bool) -> int:
    """The dry run's count, shown, and confirmed by the admin (or by --yes);
    the submit carries it, so a selection that changed meanwhile creates
    nothing. Without a terminal and without --yes nothing is submitted."""
    dry = client.submit(action, selection, params, dry_run=True)
    total = dry["total"]
    print_counts(console, dry, title=f"dry run: {action} on {total:,} learners")
    if yes or total == 0:  # nothing selected: the API says so
        return total
    if not _interactive():
        console.print(
            f"[red]error:[/] {action} would act on {total:,} learners and there is no "
            "terminal to confirm on; pass --yes to submit without asking",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    verb = action.removesuffix("_learner").capitalize()
    if not typer.confirm(f"{verb} {total:,} learners?", default=False, err=True):
        console.print("nothing submitted")
        raise typer.Exit(1)
    return total


@app.command()
def status(
    batch_id: int = typer.Argument(...),
    watch: bool = typer.Option(
        False,
        "--watch",
        help="Follow progress until it ends (a bar on a terminal, progress lines otherwise); "
        "exit 3 on failures, 4 if cancelled.",
    ),
    timeout: float = Timeout,
    as_json: bool = AsJson,
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """Show a batch: counts, percent, rate and ETA (its view as JSON on stdout)."""
    from batch_actions_client import ApiError

    with _client(url, api_token) as client:
        if watch:
            _watch(client, batch_id, timeout, as_json=True)
        try:
            view = client.batch(batch_id)
        except ApiError as exc:
            _fail(exc)
        print_counts(console, view, title=f"batch {batch_id}: {view['status']}")
        _print_json(view)


@app.command()
def items(
    batch_id: int = typer.Argument(...),
    outcome: str = typer.Option(None, help="pending, applied, skipped, failed, cancelled."),
    reason: str = typer.Option(None, help="A reason code, e.g. self or not_found."),
    as_csv: bool = typer.Option(
        False,
        "--csv",
        help="CSV as the API sends it: learner_id,external_id,email,outcome,reason,error,"
        "finished_at, the header first.",
    ),
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """List a batch's per-learner results as JSON lines (or --csv)."""
    from batch_actions_client import ApiError

    with _client(url, api_token) as client:
        try:
            if as_csv:
                for line in client.items_csv(batch_id, outcome=outcome, reason=reason):
                    typer.echo(line)
                return
            for item in client.items(batch_id, outcome=outcome, reason=reason):
                typer.echo(json.dumps(item))
        except ApiError as exc:
            _fail(exc)


@app.command()
def cancel(
    batch_id: int = typer.Argument(...),
    as_json: bool = AsJson,
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """Cancel a batch: no new learner starts; what was applied stays applied.
    Cancelling a batch already cancelled is not an error (exit 0); one that
    completed or failed is (exit 1: nothing to cancel)."""
    from batch_actions_client import ApiError

    with _client(url, api_token) as client:
        try:
            try:
                view = client.cancel(batch_id)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                view = client.batch(batch_id)
                if view["status"] != "cancelled":
                    raise exc from None
        except ApiError as exc:
            _fail(exc)
        console.print(f"batch {batch_id} is {view['status']}")
        if as_json:
            _print_json(view)


@app.command()
def retry(
    batch_id: int = typer.Argument(...),
    watch: bool = typer.Option(False, "--watch", help="Follow progress until the retry ends."),
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """Retry a finished batch's failed learners as a new batch (same action and
    params; its `retry_of` names the original)."""
    from batch_actions_client import ApiError

    with _client(url, api_token) as client:
        try:
            view = client.retry(batch_id)
        except ApiError as exc:
            _fail(exc)
        console.print(
            f"batch [bold]{view['id']}[/] {view['action']}: retries {view['total']:,} "
            f"failed learners of batch {batch_id}"
        )
        typer.echo(json.dumps({"id": view["id"], "status": view["status"], "retry_of": batch_id}))
        if watch:
            try:
                watch_batch(console, client, view["id"])
            except ApiError as exc:
                _fail(exc)


@app.command()
def batches(
    status: str = typer.Option(
        None, help="Only batches of this status: queued, running, completed, cancelled, ..."
    ),
    action: str = typer.Option(None, help=f"Only batches of this action: {ACTIONS}."),
    limit: int = typer.Option(20, min=1, max=10_000, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON array of the batches' views."),
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """Your school's batches, newest first: a table (or --json)."""
    from batch_actions_client import ApiError

    with _client(url, api_token) as client:
        try:
            found = client.batches(limit=limit, status=status, action=action)
        except ApiError as exc:
            _fail(exc)
    if as_json:
        _print_json(found)
        return
    typer.echo(f"{'id':>8}  {'action':<20} {'status':<10} {'total':>9} {'failed':>7}  created_at")
    for view in found:
        typer.echo(
            f"{view['id']:>8}  {view['action']:<20} {view['status']:<10} {view['total']:>9,} "
            f"{view['counts'].get('failed', 0):>7,}  {view['created_at']}"
        )


@app.command()
def learners(
    status: list[str] = typer.Option(None, help="invited, active, deactivated (repeatable)."),
    group_id: int = typer.Option(None, help="Members of this group."),
    q: str = typer.Option(None, help="Part of an email or name."),
    limit: int = typer.Option(None, min=1, help="At most this many (default: all)."),
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """The people list, as JSON lines: the same filter `submit` takes."""
    from itertools import islice

    from batch_actions_client import ApiError

    with _client(url, api_token) as client:
        try:
            found = client.learners(status=status or None, group_id=group_id, q=q)
            for learner in islice(found, limit):
                typer.echo(json.dumps(learner))
        except ApiError as exc:
            _fail(exc)


@app.command()
def access(
    learner_id: int = typer.Argument(...),
    as_json: bool = AsJson,
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """The courses and learning paths a learner can open right now."""
    from batch_actions_client import ApiError

    with _client(url, api_token) as client:
        try:
            granted = client.access(learner_id)
        except ApiError as exc:
            _fail(exc)
    if as_json:
        _print_json(granted)
        return

    def listed(ids: list[int]) -> str:
        return ", ".join(map(str, ids)) or "none"

    typer.echo(f"courses: {listed(granted['course_ids'])}")
    typer.echo(f"learning paths: {listed(granted['learning_path_ids'])}")


webhooks_app = typer.Typer(
    no_args_is_help=True,
    help="Completion webhooks: list, add, delete, rotate a secret, see deliveries.",
)
app.add_typer(webhooks_app, name="webhooks")


def _webhook_call(url: str, api_token: str, call):
    """Run `call(client)`; one error line and exit 1 if the API refuses."""
    from batch_actions_client import ApiError

    with _client(url, api_token) as client:
        try:
            return call(client)
        except ApiError as exc:
            _fail(exc)


@webhooks_app.command("list")
def webhooks_list(url: str = ApiUrl, api_token: str = ApiToken) -> None:
    """Your school's endpoints as JSON lines (never a secret)."""
    for endpoint in _webhook_call(url, api_token, lambda client: client.webhooks()):
        typer.echo(json.dumps(endpoint))


@webhooks_app.command("add")
def webhooks_add(
    endpoint_url: str = typer.Argument(..., help="Where to POST the events (https://...)."),
    event: list[str] = typer.Option(
        None, "--event", help="batch.completed, batch.cancelled, batch.failed (default: all)."
    ),
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """Register an endpoint. Its `whsec_...` secret is printed this once (in
    the JSON on stdout): keep it to verify deliveries."""
    from batch_actions_client.client import WEBHOOK_EVENTS

    events = event or list(WEBHOOK_EVENTS)
    created = _webhook_call(url, api_token, lambda client: client.add_webhook(endpoint_url, events))
    console.print(f"webhook {created['id']} added; its secret is shown this once")
    _print_json(created)


@webhooks_app.command("delete")
def webhooks_delete(
    webhook_id: int = typer.Argument(...), url: str = ApiUrl, api_token: str = ApiToken
) -> None:
    """Delete an endpoint: nothing more is delivered to it."""
    _webhook_call(url, api_token, lambda client: client.delete_webhook(webhook_id))
    console.print(f"webhook {webhook_id} deleted")


@webhooks_app.command("rotate")
def webhooks_rotate(
    webhook_id: int = typer.Argument(...), url: str = ApiUrl, api_token: str = ApiToken
) -> None:
    """A new secret (printed this once, in the JSON on stdout); the previous
    one still signs, as a second signature, for a grace period."""
    rotated = _webhook_call(url, api_token, lambda client: client.rotate_webhook_secret(webhook_id))
    console.print(f"webhook {webhook_id} has a new secret; it is shown this once")
    _print_json(rotated)


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    webhook_id: int = typer.Argument(...), url: str = ApiUrl, api_token: str = ApiToken
) -> None:
    """An endpoint's deliveries, each with its attempts, as JSON lines."""
    from batch_actions_client import ApiError

    with _client(url, api_token) as client:
        try:
            for delivery in client.webhook_deliveries(webhook_id):
                typer.echo(json.dumps(delivery))
        except ApiError as exc:
            _fail(exc)


@app.command()
def demo(
    learners: int = typer.Option(2000, min=10, help="Learners in the demo school."),
) -> None:
    """Seed a school and run every action through the producer and workers.

    With no services configured it runs embedded: SQLite, Dramatiq's
    in-process broker and worker, emails to a local mailbox file."""
    from batchctl.demo import run_demo

    run_demo(console, learners)


dlq_app = typer.Typer(no_args_is_help=True, help="Dead-letter queues: list, replay, purge.")
app.add_typer(dlq_app, name="dlq")
QueueOption = typer.Option(None, "--queue", help="One queue (default: every queue).")


def _rabbit():
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from shared import runtime

    broker = runtime.start().broker
    if not isinstance(broker, RabbitmqBroker):
        _fail(ValueError("dead-letter queues need RabbitMQ: set BROKER_URL=amqp://..."))
    return broker


def _queues(queue: str | None) -> list[str]:
    from shared.contract import QUEUES

    if queue is not None and queue not in QUEUES:
        raise typer.BadParameter(f"unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    return [queue] if queue else list(QUEUES)


@dlq_app.command("list")
def dlq_list(
    queue: str = QueueOption,
    show: int = typer.Option(10, min=0, help="Messages to show per queue."),
) -> None:
    """How many dead letters each queue has, and the first few (ids only)."""
    from batchctl import dlq

    broker = _rabbit()
    for name, depth in dlq.counts(broker, _queues(queue)).items():
        console.print(f"[bold]{name}[/]: {depth:,}")
        if depth and show:
            for letter in dlq.peek(broker, name.removesuffix(".XQ"), show):
                typer.echo(json.dumps(letter.describe()))


@dlq_app.command("replay")
def dlq_replay(
    queue: str = QueueOption,
    limit: int = typer.Option(1000, min=1, help="At most this many per queue."),
    dry_run: bool = typer.Option(False, help="Only say what would be replayed."),
) -> None:
    """Publish dead letters again; their failed items are reopened first."""
    from batchctl import dlq
    from shared import runtime

    broker = _rabbit()
    for name in _queues(queue):
        report = dlq.replay(broker, runtime.current().sessions, name, limit, dry_run)
        verb = "would replay" if dry_run else "replayed"
        console.print(
            f"{name}.XQ: {verb} {report.replayed:,} (items reopened: {report.reopened:,}); "
            f"left in place: unreadable {report.unreadable:,}, "
            f"refused (unsigned or forged) {report.refused:,}"
        )


@dlq_app.command("purge")
def dlq_purge(
    queue: str = QueueOption,
    dry_run: bool = typer.Option(False, help="Only count what would be dropped."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Drop dead letters for good."""
    from batchctl import dlq

    broker = _rabbit()
    queues = _queues(queue)
    if not dry_run and not yes:
        typer.confirm(f"Drop every dead letter of {', '.join(queues)}?", abort=True)
    for name in queues:
        n = dlq.purge(broker, name, dry_run)
        console.print(f"{name}.XQ: {'would drop' if dry_run else 'dropped'} {n:,}")


# --- The audit trail ---


@app.command()
def audit(
    learner_id: int = typer.Option(None, help="Entries about this learner."),
    batch_id: int = typer.Option(None, help="Entries of this batch."),
    actor_id: int = typer.Option(None, help="Entries by this admin."),
    action: str = typer.Option(
        None, help="An action (e.g. delete_learner) or an event (e.g. batch.cancelled)."
    ),
    since: str = typer.Option(None, help="At or after this moment (ISO 8601)."),
    until: str = typer.Option(None, help="Before this moment (ISO 8601)."),
    limit: int = typer.Option(None, min=1, help="At most this many entries (default: all)."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV, the header first, as the API sends it."),
    url: str = ApiUrl,
    api_token: str = ApiToken,
) -> None:
    """Your school's audit trail, newest first, as JSON lines (or --csv)."""
    from itertools import islice

    from batch_actions_client import ApiError

    filters = {
        "learner_id": learner_id,
        "batch_id": batch_id,
        "actor_id": actor_id,
        "action": action,
        "since": since,
        "until": until,
    }
    with _client(url, api_token) as client:
        try:
            if as_csv:
                lines = client.audit_csv(**filters)
                for line in islice(lines, None if limit is None else limit + 1):
                    typer.echo(line)
                return
            page_size = min(limit or 500, 500)
            for entry in islice(client.audit(page_size=page_size, **filters), limit):
                typer.echo(json.dumps(entry))
        except ApiError as exc:
            _fail(exc)
