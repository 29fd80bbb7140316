"""Brute-force oracles for windows anchored at the cutoff: a plain Python loop and a DuckDB query.

Both take the rows (keys, ``available_at``, ``event_timestamp``, value columns; NaN already
counts as null) and the query with its cutoff already a UTC instant, and return one dict per
query row, output name -> value (plus ``<name>__available_at``). They read like the contract:
the rows of the same keys with ``T - w <= available_at < T`` (``<= T`` inclusive), the lower
bound raised to ``T - ttl`` with a ttl; first/last by (available_at, event_timestamp with nulls
first, position in the frame).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import polars as pl

from featurestore.windowengine import WindowOutput


def _is_value(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _agg(agg: str, vals: list[Any]) -> Any:
    n = len(vals)
    if agg == "count":
        return n
    if n == 0:
        return None
    if agg == "sum":
        return math.fsum(vals) if isinstance(vals[0], float) else sum(vals)
    mean = math.fsum(vals) / n
    if agg == "mean":
        return mean
    if agg == "std":
        return math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n >= 2 else None
    if agg == "min":
        return min(vals)
    if agg == "max":
        return max(vals)
    return vals[0] if agg == "first" else vals[-1]


def loop_oracle(rows: pl.DataFrame, query: pl.DataFrame, outputs: Sequence[WindowOutput], *,
                keys: Sequence[str], cutoff: str, inclusive: bool = False,
                ttl: timedelta | None = None) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for i, r in enumerate(rows.iter_rows(named=True)):
        key = tuple(r[k] for k in keys)
        if any(k is None for k in key) or r["available_at"] is None:
            continue
        et = r.get("event_timestamp")
        groups[key].append((r["available_at"], et is not None, et, i, r))
    for g in groups.values():
        g.sort(key=lambda t: (t[0], t[1], t[2] if t[2] is not None else 0, t[3]))
    out = []
    for q in query.iter_rows(named=True):
        key, t = tuple(q[k] for k in keys), q[cutoff]
        res: dict[str, Any] = {}
        for o in outputs:
            if t is None or any(k is None for k in key):
                res[o.name] = res[f"{o.name}__available_at"] = None
                continue
            bounds = [b for b in (o.window, ttl) if b is not None]
            lower = t - min(bounds) if bounds else None
            window = [(av, r[o.value]) for av, _, _, _, r in groups.get(key, [])
                      if (lower is None or av >= lower) and (av <= t if inclusive else av < t)]
            vals = [(av, v) for av, v in window if _is_value(v)]
            res[o.name] = _agg(o.agg, [v for _, v in vals])
            res[f"{o.name}__available_at"] = vals[-1][0] if vals else _empty_count(o, t, inclusive)
        out.append(res)
    return out


def _empty_count(o: WindowOutput, t: Any, inclusive: bool) -> Any:
    """An empty window's count, 0, is known just before the cutoff (at it when inclusive)."""
    if o.agg != "count":
        return None
    return t if inclusive else t - timedelta(microseconds=1)


_SQL_AGG = {"count": "count(v)", "sum": "sum(v)", "mean": "avg(v)", "std": "stddev_samp(v)",
            "min": "min(v)", "max": "max(v)", "first": "arg_min(v, ord)",
            "last": "arg_max(v, ord)"}


def duckdb_oracle(rows: pl.DataFrame, query: pl.DataFrame, outputs: Sequence[WindowOutput], *,
                  keys: Sequence[str], cutoff: str, inclusive: bool = False,
                  ttl: timedelta | None = None) -> list[dict[str, Any]]:
    """The same answer as a SQL range join, one aggregate query per output."""
    import duckdb

    con = duckdb.connect()
    # ord: position in (keys, available_at, event_timestamp nulls first, frame order).
    r = rows.with_row_index("pos").with_columns(
        pl.col("available_at").dt.replace_time_zone(None))
    q = query.with_row_index("qid").with_columns(pl.col(cutoff).dt.replace_time_zone(None))
    con.register("r_raw", r.to_arrow())
    con.register("q", q.to_arrow())
    con.execute("CREATE TABLE r AS SELECT *, row_number() OVER (ORDER BY available_at, "
                "event_timestamp NULLS FIRST, pos) AS ord FROM r_raw")
    on_keys = " AND ".join(f'r."{k}" = q."{k}"' for k in keys)
    upper = "<=" if inclusive else "<"
    result: list[dict[str, Any]] = [{} for _ in range(query.height)]
    for o in outputs:
        bounds = [b for b in (o.window, ttl) if b is not None]
        lower = (f"AND r.available_at >= q.\"{cutoff}\" - INTERVAL "
                 f"'{int(min(bounds).total_seconds() * 1_000_000)} microseconds'"
                 if bounds else "")
        value = (f'CASE WHEN isnan(r."{o.value}") THEN NULL ELSE r."{o.value}" END'
                 if rows.schema[o.value].is_float() else f'r."{o.value}"')
        sql = f"""
            SELECT q.qid, {_SQL_AGG[o.agg]} AS val, max(av) FILTER (WHERE v IS NOT NULL) AS av
            FROM q LEFT JOIN (SELECT r.*, {value} AS v, r.available_at AS av FROM r) r
              ON {on_keys} AND r.available_at {upper} q."{cutoff}" {lower}
            WHERE q."{cutoff}" IS NOT NULL
              AND {' AND '.join(f'q."{k}" IS NOT NULL' for k in keys)}
            GROUP BY q.qid"""
        got = {qid: (val, av) for qid, val, av in con.execute(sql).fetchall()}
        for i in range(query.height):
            val, av = got.get(i, (None, None))
            if av is None and val == 0:
                av = _empty_count(o, query[cutoff][i].replace(tzinfo=None), inclusive)
            result[i][o.name] = val
            result[i][f"{o.name}__available_at"] = av
    return result


def assert_close(got: list[dict[str, Any]], want: list[dict[str, Any]], *,
                 rel: float = 1e-9, context: str = "") -> None:
    """Equal row by row; floats to a relative ``rel`` (of the larger of the value and 1)."""
    assert len(got) == len(want), f"{context}: {len(got)} rows, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        for name, wv in w.items():
            gv = g[name]
            if name.endswith("__available_at"):
                if gv is not None and wv is not None:
                    gv, wv = gv.replace(tzinfo=None), wv.replace(tzinfo=None)
                assert gv == wv, f"{context} row {i} {name}: got {gv}, expected {wv}"
            elif isinstance(wv, float) and gv is not None:
                scale = max(abs(wv), 1.0)
                assert abs(gv - wv) <= rel * scale, (
                    f"{context} row {i} {name}: got {gv!r}, expected {wv!r}")
            else:
                assert gv == wv, f"{context} row {i} {name}: got {gv!r}, expected {wv!r}"
