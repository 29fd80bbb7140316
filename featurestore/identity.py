"""A store's identity: which registry its root belongs to, and opening a store safely.

A store root holds ``featurestore.json``::

    {"format": "featurestore-store", "version": 1,
     "store_id": "5d0c6a2e9f8b4e51a3c1b7d2e4f60718",
     "registry_url": null,
     "created_at": "2026-12-01T10:40:00+00:00"}

``registry_url`` is null for the default (SQLite ``registry.db`` in the root, so the folder can
move) and otherwise the registry's SQLAlchemy URL *without its password* (libpq's ``PGPASSWORD``
or ``~/.pgpass`` supply it, or ``--registry`` does). The registry records the same ``store_id``
in its ``store_info`` table (and ``store_root``, the root it was last opened from for writing,
for messages). Opening a store compares the two, so a store is never read, let alone "fixed",
against another store's registry.

Opening, by what the caller allows:

* ``create`` (``init`` and the write verbs): a missing root and registry are created, and the
  id is written to both. A store made before identities existed (a registry, no
  ``featurestore.json``) is adopted: it gets an id on its first write.
* otherwise the store must exist: no root, or no identity file and no registry, is "no store at
  ROOT" (``NoStoreError``, exit 7), and nothing is created.
* ``read_only``: nothing is written at all, not even a migration (a registry that needs one is
  an error asking for a write verb), and SQLite is opened so that it cannot write.

A registry whose id differs from the root's, or that has none while the root has one, is
``StoreMismatchError`` (exit 2) naming both ids and both registries. A store whose SQLite
registry file is gone is an error too: a new empty registry is never made in its place.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, make_url

from featurestore import migrations
from featurestore.artifacts import confine, read_only_error
from featurestore.errors import (
    ArtifactError,
    FeatureStoreError,
    NoStoreError,
    NotFoundError,
    ReadOnlyStoreError,
    StoreMismatchError,
    UsageError,
)
from featurestore.registry import Registry, parse_url, sqlite_file

IDENTITY_FILE = "featurestore.json"
REGISTRY_FILE = "registry.db"
FORMAT = "featurestore-store"
FORMAT_VERSION = 1
STORE_ID = "store_id"
STORE_ROOT = "store_root"


@dataclass(frozen=True)
class Identity:
    """What ``featurestore.json`` says."""

    store_id: str
    registry_url: str | None  # None: ROOT/registry.db
    created_at: str

    def describe_registry(self, root: Path) -> str:
        return self.registry_url or str(root / REGISTRY_FILE)


def default_url(root: Path) -> str:
    return f"sqlite:///{root / REGISTRY_FILE}"


def public_url(url: str) -> str:
    """``url`` as recorded in the identity file: the password left out, not masked."""
    parsed = make_url(url)
    return parsed._replace(password=None).render_as_string(hide_password=False)


def read_identity(root: Path) -> Identity | None:
    """The root's identity, None when it has no ``featurestore.json``."""
    path = root / IDENTITY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as exc:
        raise FeatureStoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
        if data.get("format") != FORMAT or not isinstance(data.get("store_id"), str):
            raise ValueError("not a featurestore store identity")
        if data.get("version", 0) > FORMAT_VERSION:
            raise UsageError(f"{path} has version {data['version']}, newer than this release "
                             f"understands ({FORMAT_VERSION}); upgrade featurestore")
        url = data.get("registry_url")
        return Identity(data["store_id"], url if isinstance(url, str) and url else None,
                        str(data.get("created_at", "")))
    except (ValueError, AttributeError, TypeError) as exc:
        raise UsageError(f"{path} is not a featurestore identity file ({exc}); expected JSON "
                         f'with "format": "{FORMAT}" and a "store_id"') from None


def write_identity(root: Path, ident: Identity) -> Identity:
    """Write ``featurestore.json`` unless it exists; return the identity now on disk.

    Atomic and exclusive: written to a temporary file, then hard-linked into place, which fails
    when another process got there first (its identity is returned instead).
    """
    path = root / IDENTITY_FILE
    body = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "store_id": ident.store_id,
                       "registry_url": ident.registry_url, "created_at": ident.created_at},
                      indent=2) + "\n"
    tmp = root / f".fs-tmp-identity-{uuid.uuid4().hex}"
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: exclusive create instead
            try:
                with open(path, "x", encoding="utf-8") as fh:
                    fh.write(body)
                    fh.flush()
                    os.fsync(fh.fileno())
            except FileExistsError:
                pass
    except PermissionError as exc:
        raise read_only_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    on_disk = read_identity(root)
    assert on_disk is not None
    return on_disk


def _can_write(path: Path) -> bool:
    """Whether this user may write ``path``, or create it (its nearest existing ancestor)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return os.access(path, os.W_OK)


def _registry_writable(db: Path | None, root: Path) -> bool:
    """Whether this user can write the store: its SQLite file and folder (journal, WAL), or,
    for a database server, the root folder (artifacts)."""
    if db is not None:
        return _can_write(db) and _can_write(db.parent)
    return _can_write(root)


@dataclass
class Opened:
    registry: Registry
    store_id: str | None  # None: a store made before identities, opened read-only
    read_only: bool


def open_store(root: Path, registry_url: str | None, *, create: bool,
               read_only: bool | None) -> Opened:
    """Open (or with ``create`` make) the store at ``root``; see the module docstring.

    ``registry_url`` None means: the one ``featurestore.json`` records, else ``ROOT/registry.db``.
    ``read_only`` None means: read-only exactly when this user cannot write the registry.
    """
    if root.exists() and not root.is_dir():
        raise UsageError(f"store root {root} exists and is not a directory")
    ident = read_identity(root) if root.is_dir() else None
    explicit = registry_url is not None
    if registry_url is None:
        registry_url = (ident.registry_url if ident and ident.registry_url else default_url(root))
    parsed = parse_url(registry_url)
    db = sqlite_file(parsed)
    own_db = db == root / REGISTRY_FILE
    if read_only is None:
        read_only = not _registry_writable(db, root)
    if not create or read_only:
        if not root.is_dir():
            raise NoStoreError(f"no store at {root} (the folder does not exist); create one with "
                               "`featurestore init`")
        if ident is None and db is not None and not db.exists():
            raise NoStoreError(f"no store at {root}: no {IDENTITY_FILE} and no registry "
                               f"{db}; create one with `featurestore init`")
    own_registry = ident is not None and db == sqlite_file(ident.registry_url or default_url(root))
    if ident is not None and db is not None and not db.exists() and not own_registry:
        raise StoreMismatchError(
            f"registry {db} does not exist, and it is not the registry of store {root}: that "
            f"is {ident.describe_registry(root)} (store {ident.store_id})")
    if ident is not None and db is not None and not db.exists():
        raise NotFoundError(
            f"store {root} (id {ident.store_id}) has lost its registry: {db} does not exist. "
            "Restore it from a backup; a new, empty registry is never created in its place")
    if not read_only:
        if not _registry_writable(db, root):
            where = db if db is not None and db.exists() else (db.parent if db else root)
            raise ReadOnlyStoreError(f"cannot write {where}: the store is read-only for this "
                                     "user (write verbs need write access)")
        if db is not None and root in db.parents:
            _make_root(root)  # the registry file goes in it
    # The checks read through a connection that cannot write: opening SQLite for writing
    # already writes (it switches the file to WAL), and a registry is not touched before it
    # is known to be this store's. A server database writes nothing on connect.
    check_read_only = read_only or (db is not None and db.exists())
    registry = Registry(registry_url, read_only=check_read_only, migrate=False)
    try:
        version, known_id = _check(root, registry, ident, explicit=explicit, own_db=own_db,
                                   create=create, read_only=read_only)
        if read_only:
            return Opened(registry, ident.store_id if ident else known_id, True)
        if check_read_only:
            registry.close()
            registry = Registry(registry_url, migrate=False)
        if version != migrations.LATEST:
            registry.migrate()
        if ident is None and known_id is None and version > 0 and not own_db:
            _check_adoption(root, registry)
        store_id = _claim(root, registry, ident)
    except BaseException:
        registry.close()
        raise
    return Opened(registry, store_id, False)


def _make_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except PermissionError as exc:
        raise read_only_error(root, exc) from None


def _check(root: Path, registry: Registry, ident: Identity | None, *, explicit: bool,
           own_db: bool, create: bool, read_only: bool) -> tuple[int, str | None]:
    """Refuse a registry that is not this store's; return (schema version, its store id)."""
    version = registry.schema_version()
    if version > migrations.LATEST:
        raise FeatureStoreError(f"registry {registry.location} has schema version {version}, "
                                f"newer than this release understands ({migrations.LATEST}); "
                                "upgrade featurestore")
    has_info = version >= 4
    known_id = registry.info(STORE_ID) if has_info else None
    known_root = registry.info(STORE_ROOT) if has_info else None
    if ident is not None and known_id != ident.store_id:
        recorded = ident.describe_registry(root)
        registry_says = (f"records store {known_id}" + (f" (root {known_root})" if known_root else "")
                         if known_id else "records no store id")
        hint = ("; it was given by --registry or FEATURESTORE_REGISTRY_URL: give the store's own "
                f"registry ({recorded}) or none" if explicit else "")
        raise StoreMismatchError(
            f"registry {registry.location} is not the registry of store {root}: the store is "
            f"{ident.store_id} (registry {recorded}, in {root / IDENTITY_FILE}) but the registry "
            f"{registry_says}{hint}")
    if ident is None and known_id is not None and known_root != str(root) and not own_db:
        raise StoreMismatchError(
            f"registry {registry.location} belongs to store {known_id} (root {known_root}), "
            f"but {root} has no {IDENTITY_FILE}: open that root, or copy its {IDENTITY_FILE} "
            "here if the store moved")
    if version == 0 and (read_only or not create):
        raise NoStoreError(f"no store at {root}: registry {registry.location} is empty")
    if version != migrations.LATEST and read_only:
        raise FeatureStoreError(
            f"registry {registry.location} has schema version {version}; this release needs "
            f"{migrations.LATEST}. Reading never migrates: run a write verb (e.g. "
            "`featurestore apply`) once with write access to upgrade it")
    return version, known_id


def _check_adoption(root: Path, registry: Registry) -> None:
    """A store made before identities is adopted only when its root holds its artifacts."""
    rows = registry.artifacts()
    if not rows:
        return
    for row in rows:
        try:
            if confine(root, row["path"]).exists():
                return
        except ArtifactError:
            continue
    raise StoreMismatchError(
        f"registry {registry.location} records {len(rows)} artifacts and none of them is under "
        f"{root}: is --store right? (A store is adopted by the root that holds its data)")


def _claim(root: Path, registry: Registry, ident: Identity | None) -> str:
    """Record the store id in the registry and the root (whichever lacks it); return it."""
    new_id = ident.store_id if ident else uuid.uuid4().hex

    def txn(conn: Connection) -> str:
        store_id = registry.info(STORE_ID, conn)
        if store_id is None:
            store_id = new_id
            Registry.set_info(conn, STORE_ID, store_id)
        if registry.info(STORE_ROOT, conn) != str(root):
            Registry.set_info(conn, STORE_ROOT, str(root))
        return store_id

    if ident is not None and registry.info(STORE_ROOT) == str(root):
        return ident.store_id  # the common case: nothing to write
    store_id = registry.write(txn)
    if ident is None:
        _make_root(root)
        recorded = None if registry.sqlite_file == root / REGISTRY_FILE else public_url(registry.url)
        on_disk = write_identity(root, Identity(store_id, recorded,
                                                datetime.now(UTC).isoformat(timespec="seconds")))
        if on_disk.store_id != store_id:
            raise StoreMismatchError(f"{root / IDENTITY_FILE} names store {on_disk.store_id}, "
                                     f"registry {registry.location} store {store_id}")
    return store_id
