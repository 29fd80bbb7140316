"""The store's data: sources ingested into snapshots, artifacts written, recorded and read.

``StoreData`` is a part of ``FeatureStore`` (its base class), kept apart so that the store's
front door (``store.py``: opening, definitions, retrieval) and its data path can each be read
on their own. A failed write leaves neither a file nor a registry row behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from sqlalchemy import Connection, select

from featurestore import schema
from featurestore.artifacts import (
    LinkUnsupported,
    WrittenArtifact,
    confine,
    link_artifact_atomic,
    reading_artifacts,
    remove_artifact_path,
    schema_dict,
    verify_artifact,
    write_parquet_atomic,
    write_parts_atomic,
    writers_lock,
)
from featurestore.checksums import checksum_remembered
from featurestore.definitions import canonical_json
from featurestore.errors import ArtifactError, NotFoundError
from featurestore.layout import sorted_by
from featurestore.plan import absolute_source_path
from featurestore.readers import ensure_lock_files, reading
from featurestore.reference import (
    SOURCE_ROW,
    artifact_frame,
    index_buckets,
    reference_of,
    reference_params,
    snapshot_layout,
)
from featurestore.registry import utcnow
from featurestore.snapshotview import SnapshotColumns
from featurestore.sourcedata import (
    normalize,
    resolve_files,
    scan,
    snapshot_rows,
    source_read_errors,
    validate_rows,
)
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

if TYPE_CHECKING:
    from featurestore.registry import Registry
    from featurestore.tiers import TierOrder

Progress = Callable[[str, int, int], None]


def _noop_progress(_label: str, _done: int, _total: int) -> None:
    return None


def snapshot_marker(df: pl.DataFrame, keys: Sequence[str]) -> dict[str, str]:
    """``{"order": "retrieval"}`` for a snapshot's rows not in event order (keys, event time),
    else nothing: every snapshot without the marker, old ones included, is in event order."""
    ids = [*keys, EVENT_TIMESTAMP]
    return {} if sorted_by(df.select(ids), ids) else {"order": "retrieval"}


def _hashing(fingerprint: Callable[[], str]) -> Future[str]:
    """``fingerprint()`` computed in a thread (hashing releases the GIL), so that hashing a
    source's files overlaps reading them; its error, if any, is raised by ``result()``."""
    future: Future[str] = Future()

    def run() -> None:
        try:
            future.set_result(fingerprint())
        except BaseException as exc:  # handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=run, name="featurestore-fingerprint", daemon=True).start()
    return future


def _done(value: str) -> Future[str]:
    future: Future[str] = Future()
    future.set_result(value)
    return future


def _marking(parts: Iterator[pl.DataFrame], keys: Sequence[str],
             params: dict[str, Any]) -> Iterator[pl.DataFrame]:
    """``parts`` as they come, adding to ``params`` the marker of any part not in event order."""
    for part in parts:
        params.update(snapshot_marker(part, keys))
        yield part
        del part  # before the next part is read: one bucket in memory, not two


class StoreData:
    """Ingestion and artifacts of a ``FeatureStore`` (see the module docstring)."""

    if TYPE_CHECKING:  # provided by FeatureStore
        root: Path
        registry: Registry
        compression: str

        @property
        def tiers(self) -> TierOrder: ...

        def _require_writable(self, what: str) -> None: ...

    def _source_fingerprint(self, src: dict[str, Any]) -> str:
        return self._fingerprinter(src)()

    def _fingerprinter(self, src: dict[str, Any],
                       sums: dict[str, str] | None = None) -> Callable[[], str]:
        """The source's input fingerprint, in two steps: what the registry says is read now;
        the returned function hashes the input files (and touches no registry, so it may run
        in another thread), putting each file's checksum in ``sums`` when given."""
        digest = hashlib.sha256(canonical_json({k: src[k] for k in (
            "name", "version", "path", "entity", "event_time", "timezone", "available_time",
            "fills", "on_duplicate", "tier")} | ({  # only when declared: old fingerprints hold
                "available_lag_seconds": src["available_lag_seconds"]}
                if src.get("available_lag_seconds") is not None else {})).encode())
        digest.update(canonical_json([t.lag.total_seconds() for t in self.tiers]).encode())
        files = resolve_files(absolute_source_path(src["path"], self.root))

        def hash_files() -> str:
            for f in files:
                # Content, not mtime: a rewritten but identical file is not new input.
                # Remembered as verified: a snapshot by reference checks these very files.
                checksum = checksum_remembered(Path(f))
                if sums is not None:
                    sums[f] = checksum
                digest.update(f"{f}:{checksum}".encode())
            return "sha256:" + digest.hexdigest()

        return hash_files

    def source_lag(self, src: Mapping[str, Any]) -> timedelta:
        """A registered source's availability lag: its own ``available_lag``, else its tier's."""
        own = src.get("available_lag_seconds")
        return timedelta(seconds=own) if own is not None else self.tiers.get(src["tier"]).lag

    def source_frame(self, name: str) -> tuple[pl.LazyFrame, dict[str, Any], list[str], str]:
        """A source's rows in store layout, lazily, unvalidated: (frame, source row, keys, path)."""
        src = self.registry.get("source", name)
        keys = self.registry.get("entity", src["entity"])["join_keys"]
        lag = self.source_lag(src)
        path = absolute_source_path(src["path"], self.root)
        lf = normalize(scan(path), path=path, keys=keys, event_time=src["event_time"],
                       timezone=src["timezone"], lag=lag, available_time=src["available_time"],
                       expected_schema=src["schema"])
        return lf, src, keys, path

    def snapshot_order(self, src: Mapping[str, Any]) -> str:
        """The order a source's next snapshot is written in: ``"event"`` (keys, event time) when
        a live view runs a transform over it, which reads rows in event order; else
        ``"retrieval"`` (``featurestore.layout``), so that its column view can be the snapshot's
        own file (``featurestore.snapshotview``). The two are the same order whenever
        availability never goes back in event order (a fixed lag). A snapshot that is not in
        event order says so in its registry row (``params.order``, ``snapshot_marker``), and
        is written again when a transform view of its source appears."""
        views = self.registry.latest("view").values()
        return "event" if any(v["source"] == src["name"] and v["transform"] is not None
                              for v in views) else "retrieval"

    def read_source(self, name: str, *, order: str = "event") -> pl.DataFrame:
        """A source's rows in store layout (keys, event_timestamp, available_at, columns),
        validated and filled, in event order (keys, event time: what transforms read and what
        every engine returns) or, with ``order="retrieval"``, in retrieval order
        (``featurestore.layout``; ingest asks for ``snapshot_order``)."""
        if order not in ("event", "retrieval"):
            raise ValueError(f"order must be 'event' or 'retrieval', got {order!r}")
        lf, src, keys, path = self.source_frame(name)
        # The row number keeps the read order for the checks; numbered while reading, the
        # frame is validate_rows' to sort in place, so the rows are never in memory twice.
        row, names = "__fs_ingest_row", lf.collect_schema().names()
        while row in names:
            row = "_" + row
        with source_read_errors(path, name):
            df = lf.with_row_index(row).collect(engine="streaming")
        if order == "retrieval" and not src["fills"]:
            return validate_rows(df, path=path, keys=keys, event_time=src["event_time"],
                                 on_duplicate=src["on_duplicate"], order=order, read_rows=row)
        return snapshot_rows(df, src, path=path, keys=keys, order=order, read_rows=row)

    def ingest(self, sources: Sequence[str] | None = None, *, force: bool = False,
               progress: Progress = _noop_progress,
               engine: str | None = None) -> list[dict[str, Any]]:
        """Validate and snapshot sources into artifacts; unchanged inputs are skipped.

        Returns one dict per source: ``name``, ``status`` (``ingested`` / ``up-to-date``) and
        the artifact row. ``engine`` names the engine that reads and writes the data
        (``featurestore.engines``; default ``FEATURESTORE_ENGINE``, else ``polars``).
        """
        from featurestore.engines import get_engine

        runner = get_engine(engine)
        registered = self.registry.latest("source")
        names = list(sources) if sources else sorted(registered)
        for n in names:
            if n not in registered:
                from featurestore.lifecycle import refuse_deleted

                refuse_deleted(self, "source", n)
                raise NotFoundError(f"source {n!r} is not registered")
        results = []
        for i, name in enumerate(names):
            progress(f"ingest {name}", i, len(names))
            results.append(self._ingest_one(name, registered[name], force=force,
                                            engine=runner)[0])
        progress("ingest", len(names), len(names))
        return results

    def _ingest_one(self, name: str, src: dict[str, Any], *, force: bool = False,
                    engine: Any = None) -> tuple[dict[str, Any], pl.DataFrame | None]:
        """One source's ``ingest`` result, with the snapshot's rows when they were just
        written (None when the snapshot was up to date and so not read, or was written by an
        engine other than Polars)."""
        latest = self.registry.latest_artifact("source", name)
        sums: dict[str, str] = {}
        if force or not latest:
            # Nothing to compare it with: the input files are hashed while they are read.
            return self._snapshot(name, src, _hashing(self._fingerprinter(src, sums)), engine,
                                  sums)
        fingerprint = self._fingerprinter(src, sums)()
        if (latest["input_fingerprint"] == fingerprint
                and latest["object_version"] == src["version"]
                and not ((latest["params"].get("order") == "retrieval"
                          or reference_of(latest) is not None)
                         and self.snapshot_order(src) == "event")  # a transform reads it now
                # Other engines read snapshots that hold their rows.
                and not (reference_of(latest) is not None and engine is not None
                         and engine.name != "polars")
                and self.intact(latest, rebuilding="re-snapshotting the source")):
            return {"name": name, "status": "up-to-date", "artifact": latest}, None
        return self._snapshot(name, src, _done(fingerprint), engine, sums)

    def _snapshot(self, name: str, src: dict[str, Any], fingerprint: Future[str],
                  engine: Any, sums: dict[str, str]) -> tuple[dict[str, Any], pl.DataFrame | None]:
        """``_ingest_one`` for a source whose snapshot is written now; ``fingerprint`` is its
        input fingerprint, maybe still being computed (and ``sums`` its files' checksums once
        it is)."""
        if engine is not None and engine.name != "polars":  # the engine reads and writes
            frame = engine.read_source(self, name)
            row = self._record_artifact("source", name, src["version"], frame,
                                        fingerprint=fingerprint.result(), transform=None,
                                        plugin=None,
                                        plugin_version=None, params={"fills": src["fills"]},
                                        verified=True, verification="source snapshot",
                                        engine=engine)
            return {"name": name, "status": "ingested", "artifact": row}, None
        from featurestore.buckets import bucketed_source, source_buckets

        keys = self.registry.get("entity", src["entity"])["join_keys"]
        order = self.snapshot_order(src)
        params: dict[str, Any] = {"fills": src["fills"]}
        if order == "retrieval":  # its column views need not check the order again
            params["layout"] = "retrieval"
            if (not src["fills"] and SOURCE_ROW not in src["schema"]
                    and snapshot_layout(self.settings()) == "reference"):
                return self._index_snapshot(name, fingerprint, sums, params)
        n = source_buckets(self, src)
        with bucketed_source(self, name, n, order=order) as parts:
            df = self.read_source(name, order=order) if parts is None else None
            if df is not None:
                params.update(snapshot_marker(df, keys))
            else:
                parts = _marking(parts, keys, params)
            # params is read when the row is inserted, after the last part is written.
            row = self._record_artifact("source", name, src["version"],
                                        df if parts is None else parts,
                                        fingerprint=fingerprint.result(), transform=None,
                                        plugin=None,
                                        plugin_version=None, params=params,
                                        verified=True, verification="source snapshot")
        return {"name": name, "status": "ingested", "artifact": row}, df

    def _index_snapshot(self, name: str, fingerprint: Future[str], sums: dict[str, str],
                        params: dict[str, Any]) -> tuple[dict[str, Any], pl.DataFrame | None]:
        """``_snapshot`` by reference (``featurestore.reference``): only the key and time
        columns are read, validated and sorted; the rows' values stay in the source files,
        whose checksums (taken while the index is built) the registry row records."""
        from featurestore.buckets import bucketed_source

        lf, src, keys, path = self.source_frame(name)
        names = lf.collect_schema().names()
        base = [*keys, EVENT_TIMESTAMP, AVAILABLE_AT]
        files = resolve_files(path)
        n = index_buckets(files, keys, self.settings())

        # The row number each row is read with (its position in the source) is what
        # validation orders duplicates by, and then the index's __fs_source_row.
        # Bucketed, the index's parts hold whole entities each, in retrieval order, as a
        # copy's do (retrieval_buckets searches them one by one).
        with bucketed_source(self, name, n, order="retrieval", source_rows=SOURCE_ROW,
                             narrow=lambda frame: frame.select(base)) as parts:
            df = None
            if parts is None:
                with source_read_errors(path, name):
                    df = lf.select(base).with_row_index(SOURCE_ROW).collect(engine="streaming")
                df = validate_rows(df, path=path, keys=keys, event_time=src["event_time"],
                                   on_duplicate=src["on_duplicate"], order="retrieval",
                                   read_rows=SOURCE_ROW, keep_rows=True)
            written_fp = fingerprint.result()  # every file hashed: sums is complete
            ref = reference_params(files, sums, [c for c in names if c not in base])
            row_ = self._record_artifact(
                "source", name, src["version"], df if parts is None else parts,
                fingerprint=written_fp, transform=None, plugin=None, plugin_version=None,
                params={**params, "reference": ref}, verified=True,
                verification="source snapshot (by reference)",
                schema=schema_dict(lf.collect_schema()))
        return {"name": name, "status": "ingested", "artifact": row_}, df

    def _artifact_relpath(self, kind: str, name: str, version: int) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        return f"data/{kind}s/{name}/v{version}-{stamp}-{uuid.uuid4().hex[:8]}.parquet"

    def _record_artifact(self, kind: str, name: str, version: int, df: Any, *,
                         fingerprint: str, transform: str | None, plugin: str | None,
                         plugin_version: str | None, params: Mapping[str, Any],
                         verified: bool, verification: str,
                         input_artifact_id: int | None = None,
                         verification_report: str = "{}", engine: Any = None,
                         verdict: Callable[[], tuple[bool, str, str]] | None = None,
                         schema: dict[str, str] | None = None) -> dict[str, Any]:
        """Write ``df`` (a frame of ``engine``, Polars by default) as a new artifact and record
        it; on any failure neither the file nor the row is left behind.

        ``verdict``, when given, is called once the data is written and returns ``(verified,
        verification, verification_report)`` in place of those arguments: a bucketed view's
        parts are verified as they are computed, while they are written. ``schema``, when
        given, is recorded instead of the written columns' (an index's: its rows' columns).
        """
        self._require_writable(f"write an artifact of {kind} {name!r}")
        relpath = self._artifact_relpath(kind, name, version)
        ensure_lock_files(self.root)  # readers lock them; see featurestore.readers
        with writers_lock(self.root):  # doctor --fix may not take the file for an orphan meanwhile
            try:
                written = None
                if isinstance(df, SnapshotColumns):
                    # A column view of a snapshot already in its order: the snapshot's files,
                    # linked; rows to write only where the file system cannot link.
                    try:
                        written = link_artifact_atomic(self.root, relpath, df.snapshot, df.schema)
                    except LinkUnsupported:
                        if reference_of(df.snapshot) is not None:  # rows: the index's columns
                            schema = df.schema
                        df = df.rows()
                if written is None:
                    written = self._write(relpath, df, engine)
                if schema is not None:
                    written = dataclasses.replace(written, schema=dict(schema))
                if verdict is not None:
                    verified, verification, verification_report = verdict()
                return self.registry.write(lambda conn: self._insert_artifact(
                    conn, kind, name, version, written, fingerprint, transform, plugin,
                    plugin_version, params, verified, verification, input_artifact_id,
                    verification_report))
            except BaseException:
                # Ctrl-C lands anywhere, even after the rename or after the commit: remove the
                # new file unless the registry recorded it, so no orphan and no lost artifact.
                self._discard_unregistered(relpath)
                raise

    def _write(self, relpath: str, df: Any, engine: Any) -> WrittenArtifact:
        # A frame is one file; an iterable of frames is a bucketed artifact, one part each,
        # written as they come (one bucket in memory at a time). Another engine writes its own
        # frame.
        if engine is not None:
            return engine.write_artifact(  # type: ignore[no-any-return]
                self.root, relpath, df, compression=self.compression,
                time_column=EVENT_TIMESTAMP)
        if isinstance(df, pl.DataFrame):
            return write_parquet_atomic(self.root, relpath, df, compression=self.compression,
                                        time_column=EVENT_TIMESTAMP)
        return write_parts_atomic(self.root, relpath, df, compression=self.compression,
                                  time_column=EVENT_TIMESTAMP)

    def _discard_unregistered(self, relpath: str) -> None:
        try:
            with self.registry.read() as conn:
                recorded = conn.execute(select(schema.artifacts.c.id).where(
                    schema.artifacts.c.path == relpath)).first() is not None
        except Exception:
            return  # cannot tell: keep the file (doctor lists it if it is an orphan)
        if not recorded:
            remove_artifact_path(self.root / relpath)

    @staticmethod
    def _insert_artifact(conn: Connection, kind: str, name: str, version: int,
                         w: WrittenArtifact, fingerprint: str, transform: str | None,
                         plugin: str | None, plugin_version: str | None,
                         params: Mapping[str, Any], verified: bool,
                         verification: str, input_artifact_id: int | None = None,
                         verification_report: str = "{}") -> dict[str, Any]:
        values = {
            "kind": kind, "name": name, "object_version": version, "path": w.path,
            "compression": w.compression, "schema": json.dumps(w.schema),
            "row_count": w.row_count, "min_event_time": w.min_event_time,
            "max_event_time": w.max_event_time, "checksum": w.checksum,
            "size_bytes": w.size_bytes, "transform": transform, "plugin": plugin,
            "plugin_version": plugin_version, "params": canonical_json(params),
            "input_fingerprint": fingerprint, "verified": verified,
            "verification": verification, "created_at": utcnow(),
            "input_artifact_id": input_artifact_id, "verification_report": verification_report,
            "parts": json.dumps(list(w.parts))}
        new_id = conn.execute(schema.artifacts.insert().values(**values)).inserted_primary_key[0]
        return {"id": new_id, **values, "schema": w.schema, "params": dict(params),
                "parts": list(w.parts)}

    # ------------------------------------------------------------------ artifacts
    def artifact(self, artifact_id: int) -> dict[str, Any]:
        for row in self.registry.artifacts():
            if row["id"] == artifact_id:
                return row
        raise NotFoundError(f"artifact {artifact_id} is not registered")

    def load_artifact(self, artifact_id: int, *, lazy: bool = False,
                      verify_checksum: bool = True) -> pl.DataFrame | pl.LazyFrame:
        """Read an artifact after checking its checksum (remembered per user, so cheap after
        the first read) and schema against the registry."""
        # Only the artifact's columns: a column view's file may be its source snapshot's.
        if lazy:  # read after this returns: no reader's lock can cover it
            row = self.artifact(artifact_id)
            verify_artifact(self.root, row, checksum=verify_checksum)
            return artifact_frame(self.root, row)
        with reading(self.root):
            row = self.artifact(artifact_id)
            path = verify_artifact(self.root, row, checksum=verify_checksum)
            with reading_artifacts([path]):
                return artifact_frame(self.root, row).collect()

    def intact(self, row: dict[str, Any], *, rebuilding: str | None = None) -> bool:
        """Whether an artifact's file is there and matches its registry row.

        With ``rebuilding`` (what the caller does instead) a damaged or missing file is warned
        about, so ``ingest`` and ``materialize`` never call a lost artifact up to date.
        """
        try:
            verify_artifact(self.root, row)
        except ArtifactError as exc:
            if rebuilding:
                warnings.warn(f"{exc}: {rebuilding}", stacklevel=3)
            return False
        return True

    def source_snapshot(self, name: str) -> tuple[dict[str, Any], Path]:
        """The newest ingested snapshot of a source (ingesting first when inputs changed):
        its artifact row and the checked path of its Parquet file."""
        row, path, _ = self.fresh_snapshot(name)
        return row, path

    def fresh_snapshot(self, name: str) -> tuple[dict[str, Any], Path, pl.DataFrame | None]:
        """``source_snapshot`` plus the snapshot's rows when this call wrote it as one file
        (else None).

        A snapshot written just now is not hashed again: its checksum was taken from the bytes
        as they were written; and a one-file snapshot's rows are still in memory, so a caller
        that needs them reads nothing back.
        """
        if name not in self.registry.latest("source"):
            [result] = self.ingest([name])  # raises the usual not-registered / deleted error
            return result["artifact"], verify_artifact(self.root, result["artifact"]), None
        result, frame = self._ingest_one(name, self.registry.latest("source")[name])
        row = result["artifact"]
        if result["status"] != "ingested":
            return row, verify_artifact(self.root, row), None
        return row, confine(self.root, row["path"]), frame
