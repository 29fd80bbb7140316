"""Shared fixtures: real SQLite files and a real PostgreSQL schema per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.realdata import shared_data_root

# CI runs every property test on the same examples (HYPOTHESIS_PROFILE=ci, set by .ci/run), so
# a red build is reproducible; a developer's default run keeps exploring new ones.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

PG_ENV = "FEATURESTORE_TEST_PG_URL"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_base_url() -> str | None:
    """The PostgreSQL URL to test against, or None to skip (only when the env var is unset)."""
    from sqlalchemy import create_engine, text

    url = os.environ.get(PG_ENV)
    required = bool(url)
    url = url or PG_DEFAULT
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:
        if required:
            pytest.fail(f"{PG_ENV} is set but PostgreSQL does not answer at {url}: {exc}")
        return None
    return url


@pytest.fixture(scope="session", autouse=True)
def _checksum_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Verified-checksum markers of the test run go to a temporary folder, not ~/.cache."""
    os.environ.setdefault("FEATURESTORE_CACHE_DIR", str(tmp_path_factory.mktemp("checksums")))


@pytest.fixture(scope="session")
def pg_base_url() -> str | None:
    return _pg_base_url()


@pytest.fixture
def pg_url(pg_base_url: str | None) -> Iterator[str]:
    """A URL whose connections use a fresh schema, dropped after the test."""
    if pg_base_url is None:
        pytest.skip(f"no PostgreSQL server answers (set {PG_ENV} to make this a failure)")
    from sqlalchemy import create_engine, text

    name = f"fs_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    sep = "&" if "?" in pg_base_url else "?"
    try:
        yield f"{pg_base_url}{sep}options=-csearch_path%3D{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each registry test runs on a real SQLite file and on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def shared_data() -> Path:
    """The public motorsport data (see ``tests/realdata.py``)."""
    return shared_data_root()


SPARK_ENV = "FEATURESTORE_TEST_SPARK"


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One SparkSession on ``local[2]`` for the whole run (a JVM start takes seconds).

    Skipped when pyspark or Java is missing, unless FEATURESTORE_TEST_SPARK=1 (set by .ci/run):
    then that is a failure, so CI can never pass by skipping the Spark tests.
    """
    import importlib.util
    import shutil

    required = os.environ.get(SPARK_ENV) == "1"
    problem = None
    if importlib.util.find_spec("pyspark") is None:
        problem = "pyspark is not installed (pip install -e '.[test]')"
    elif shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        problem = "no Java runtime (the spark engine needs Java 17+)"
    if problem:
        if required:
            pytest.fail(f"{SPARK_ENV}=1 but {problem}")
        pytest.skip(f"{problem}; set {SPARK_ENV}=1 to make this a failure")
    os.environ["FEATURESTORE_SPARK_MASTER"] = "local[2]"
    from featurestore.engines.spark.session import spark_session

    yield spark_session()
