"""``featurestore publish``, ``unpublish`` and ``serve``: the online store from the shell."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator

import click

from featurestore.cli import Ctx, pass_ctx
from featurestore.cli_output import emit_json, print_table
from featurestore.errors import DefinitionError, FeatureStoreError

PUBLISH_COLUMNS = ["view", "status", "view_version", "artifact_id", "entities", "changed",
                   "removed", "rows", "seconds"]


def _history(value: str) -> int | None:
    if value == "all":
        return None
    try:
        rows = int(value)
    except ValueError:
        raise click.BadParameter(f"expected a number of rows or 'all', got {value!r}") from None
    if rows < 1:
        raise click.BadParameter("keep at least 1 row per entity (or 'all')")
    return rows


def publish_and_report(c: Ctx, views: list[str] | None, *, history: int | None, force: bool,
                       as_json: bool) -> None:
    """Publish ``views`` (all by default) and print what happened (shared with materialize)."""
    from featurestore.online import publish

    results = [r.as_dict() for r in publish(c.store, views, history=history, force=force,
                                            backend=_backend(c))]
    if as_json:
        emit_json(results)
    else:
        print_table(results, PUBLISH_COLUMNS, title=f"online store {_backend(c).url}")


def _backend(c: Ctx):  # type: ignore[no-untyped-def]
    from featurestore.online import open_backend

    backend = getattr(c, "_online_backend", None)
    if backend is None:
        backend = c._online_backend = open_backend(c.store)  # type: ignore[attr-defined]
    return backend


online_store_option = click.option(
    "--online-store", "online_store", default=None, envvar="FEATURESTORE_ONLINE_STORE",
    help="Online store URL: 'sqlite' (ROOT/online.db, the default), sqlite:///PATH or "
         "redis://HOST:PORT/DB[?prefix=NAME].")


@click.command()
@click.argument("views", nargs=-1)
@click.option("--history", "history_arg", default="1", show_default=True,
              help="Rows kept per entity from before the publish moment ('all' keeps every "
                   "row); later rows are always kept.")
@click.option("--force", is_flag=True, help="Rewrite even when the online version is current.")
@click.option("--list", "list_only", is_flag=True, help="Only list what is published.")
@online_store_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def publish(c: Ctx, views: tuple[str, ...], history_arg: str, force: bool, list_only: bool,
            online_store: str | None, as_json: bool) -> None:
    """Copy VIEWS' newest artifacts (all views by default) into the online store.

    Only entities whose kept rows changed are rewritten; readers see the previous version or
    the new one, never a mix. Without VIEWS, views no longer registered are removed.
    """
    c.store.online_store = online_store
    if list_only:
        rows = []
        for meta in _backend(c).metas().values():
            rows.append({"view": meta.view, "view_version": meta.view_version,
                         "artifact_id": meta.artifact_id, "verified": meta.verified,
                         "entities": meta.entities, "rows": meta.rows,
                         "history": "all" if meta.history is None else meta.history,
                         "published_at": meta.published_at})
        if as_json:
            emit_json(rows)
        else:
            print_table(rows, ["view", "view_version", "artifact_id", "verified", "entities",
                               "rows", "history", "published_at"],
                        title=f"online store {_backend(c).url}")
        return
    publish_and_report(c, list(views) or None, history=_history(history_arg), force=force,
                       as_json=as_json)


@click.command()
@click.argument("views", nargs=-1, required=True)
@online_store_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def unpublish(c: Ctx, views: tuple[str, ...], online_store: str | None, as_json: bool) -> None:
    """Remove VIEWS from the online store (lookups then read their artifacts)."""
    from featurestore.online import unpublish as run

    c.store.online_store = online_store
    removed = run(c.store, list(views), backend=_backend(c))
    if as_json:
        emit_json({"removed": removed})
    else:
        click.echo(f"removed: {', '.join(removed) or '(none were published)'}")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=6566, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port; the address is printed).")
@online_store_option
@click.option("--max-keys", default=1000, show_default=True, type=click.IntRange(1),
              help="Most entity rows one request may ask for.")
@click.option("--registry-ttl", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Seconds a registry lookup is reused before it is read again.")
@click.option("--graceful-timeout", default=10.0, show_default=True, type=click.FloatRange(0),
              help="Seconds requests in flight get to finish on SIGTERM/SIGINT.")
@click.option("--access-log", is_flag=True, help="Log every request (costs throughput).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@pass_ctx
def serve(c: Ctx, host: str, port: int, online_store: str | None, max_keys: int,
          registry_ttl: float, graceful_timeout: float, access_log: bool, log_level: str) -> None:
    """Serve online features over HTTP: POST /get-online-features, GET /health, /features.

    Stops on SIGTERM or Ctrl+C after the requests in flight are answered.
    """
    try:
        import uvicorn
    except ImportError:
        raise FeatureStoreError("featurestore serve needs FastAPI and uvicorn: "
                                "pip install 'featurestore[serve]'") from None
    from featurestore.server import create_app

    c.store.online_store = online_store
    sock = _listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    ready = (f"featurestore serving http://{shown}:{sock.getsockname()[1]} (online store: "
             f"{_backend(c).url}); SIGTERM or Ctrl+C stops it")

    def announce() -> None:  # once uvicorn handles signals: a script may stop it from now on
        click.echo(ready)
        sys.stdout.flush()

    app = create_app(c.store, max_keys=max_keys, registry_ttl=registry_ttl, on_ready=announce)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=graceful_timeout, lifespan="on",
                            server_header=False)
    _server_class()(config).run(sockets=[sock])
    click.echo("featurestore server stopped")


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):  # type: ignore[misc]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                # Stopped gracefully: exit with status 0 instead of re-raising the signal.
                getattr(self, "_captured_signals", []).clear()

    return Server


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket (uvicorn serves on it), so port 0 can pick a free port race-free."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise DefinitionError(f"--host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)  # connections queue from now on, before uvicorn starts accepting
    except OSError as exc:
        sock.close()
        raise FeatureStoreError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


COMMANDS = [publish, unpublish, serve]
