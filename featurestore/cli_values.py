"""Command-line text to typed values: timestamps, entity keys and output paths.

Everything typed at a shell is a string. These helpers give each value the type the store
expects, or raise ``UsageError`` (exit code 2) naming the option, the value and what was expected.
The rule for keys: a ``--key column=value`` is cast to the dtype the key column has in the view
artifacts that serve the requested features (their Parquet schema), never guessed from its text,
so ``007`` stays ``"007"`` for a String key and ``abc`` is refused for an integer key.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.errors import UsageError

if TYPE_CHECKING:
    import polars as pl

    from featurestore.store import FeatureStore


def parse_timestamp(text: str, *, option: str) -> datetime:
    """An ISO 8601 date or timestamp; naive values are UTC. ``option`` names the flag in errors."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected an ISO 8601 timestamp such as "
                         "2025-03-09T14:00:00+00:00 or 2025-03-09 (naive times are UTC)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse_key_args(args: Sequence[str], *, option: str = "--key") -> dict[str, list[str]]:
    """``column=value`` pairs, by column in the order given; one query row per value."""
    keys: dict[str, list[str]] = {}
    for arg in args:
        col, sep, value = arg.partition("=")
        if not sep or not col.strip():
            raise UsageError(f"{option} {arg!r}: expected column=value, e.g. driver_id=12")
        keys.setdefault(col.strip(), []).append(value)
    counts = {col: len(values) for col, values in keys.items()}
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{col}: {n}" for col, n in counts.items())
        raise UsageError(f"{option}: every key column needs the same number of values, one per "
                         f"row ({shown})")
    return keys


def key_dtypes(store: FeatureStore, features: str | Sequence[str]) -> dict[str, tuple[pl.DataType, str]]:
    """Each key column of the views serving ``features``: its dtype in the artifact and the view.

    Read from the artifacts' Parquet footers (the registered schema of what will be searched).
    """
    from featurestore.serving import view_frames

    out: dict[str, tuple[pl.DataType, str]] = {}
    # Only the key dtypes are read here; serving the values applies the unverified-view guard.
    for vf in view_frames(store, store.resolve_features(features), allow_unverified=True):
        schema = vf.frame.collect_schema()
        for key in vf.keys:
            out.setdefault(key, (schema[key], vf.name))
    return out


def typed_keys(store: FeatureStore, key_args: Sequence[str],
               features: str | Sequence[str]) -> pl.DataFrame:
    """The query frame for ``--key`` arguments, each column cast to its key dtype (see above)."""
    import polars as pl

    raw = parse_key_args(key_args)
    dtypes = key_dtypes(store, features)
    columns: dict[str, pl.Series] = {}
    for col, values in raw.items():
        if col not in dtypes:
            known = ", ".join(dtypes) or "(none)"
            raise UsageError(f"--key {col}=...: {col!r} is not a key column of the requested "
                             f"features' views; their key columns: {known}")
        dtype, view = dtypes[col]
        columns[col] = pl.Series(col, [cast_key(v, dtype, col=col, view=view) for v in values],
                                 dtype=dtype)
    return pl.DataFrame(columns)


def cast_key(text: str, dtype: pl.DataType, *, col: str, view: str) -> Any:
    """``text`` as a value of ``dtype``, or ``UsageError`` naming the column, dtype and value."""
    import polars as pl

    def refuse(expected: str) -> UsageError:
        return UsageError(f"--key {col}={text}: key column {col!r} is {dtype} in view {view!r}; "
                          f"{text!r} is not {expected}")

    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return text
    if dtype == pl.Boolean:
        lowered = text.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise refuse("a boolean (true/false)")
    if dtype.is_integer():
        try:
            value = int(text.strip())
        except ValueError:
            raise refuse("an integer") from None
        try:
            pl.Series([value]).cast(dtype, strict=True)
        except Exception:
            raise refuse(f"in the range of {dtype}") from None
        return value
    if dtype == pl.Date:
        try:
            return date.fromisoformat(text.strip())
        except ValueError:
            raise refuse("an ISO date (YYYY-MM-DD)") from None
    if isinstance(dtype, pl.Datetime):
        try:
            value = datetime.fromisoformat(text.strip())
        except ValueError:
            raise refuse("an ISO timestamp") from None
        zoned = dtype.time_zone is not None
        if zoned and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value if zoned or value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
    try:
        return pl.Series([text]).cast(dtype, strict=True)[0]
    except Exception:
        raise refuse(f"a {dtype} value") from None


def check_output_path(path: str, *, option: str = "--output") -> None:
    """Refuse, before any work, an output path whose directory could never be created."""
    ancestor = Path(path).absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{option} {path}: cannot create directory {Path(path).parent}: "
                         f"{ancestor} is a file")


@contextmanager
def output_file(path: str, *, option: str = "--output") -> Iterator[Path]:
    """A temporary path next to ``path``, renamed over it when the block succeeds.

    Missing parent directories are created, as ``pytest --junitxml`` and ``pip download -d`` do.
    An interrupted or failed write leaves no partial file: the previous file, if any, stays.
    """
    final = Path(path)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{option} {path}: cannot create directory {parent}: a file of that "
                         "name is in the way") from None
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create directory {parent}: "
                         f"{exc.strerror or exc}") from None
    tmp = parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write the file: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def engine_option(fn: Any) -> Any:
    """``--engine NAME``: the engine a data verb runs on (``featurestore.engines``)."""
    import click

    return click.option(
        "--engine", default=None, metavar="NAME",
        help="Engine that runs this command: polars (default) or spark, or an engine a plugin "
             "adds (default: $FEATURESTORE_ENGINE, else polars).")(fn)
