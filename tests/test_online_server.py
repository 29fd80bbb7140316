"""The HTTP feature server: the real CLI in a subprocess on a free loopback port, real HTTP.

Every request here crosses a socket to ``featurestore serve``; answers are checked against the
in-process ``get_online_features`` and the plain-loop oracle, also under 32 concurrent clients,
and a SIGTERM in the middle of traffic must leave every answer whole.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from featurestore import FeatureStore
from featurestore.materialize import materialize
from featurestore.online import publish
from tests.onlinekit import T0, laps_store, oracle, random_laps, redis_store_url

MAX_KEYS = 50


class Server:
    """``featurestore serve --port 0`` as a child process; the URL comes from its first line."""

    def __init__(self, root: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTORE_REGISTRY")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "featurestore", "-s", str(root), "serve", "--port", "0",
             "--max-keys", str(MAX_KEYS), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(
            target=lambda: [lines.put(x) for x in self.proc.stdout],  # type: ignore[union-attr]
            daemon=True)
        self.reader.start()
        self.lines = lines
        try:
            first = lines.get(timeout=120)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"server did not start: {self.proc.stderr.read()}") from None  # type: ignore[union-attr]
        assert first.startswith("featurestore serving http://127.0.0.1:"), first
        self.url = first.split()[2]

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.reader.join(timeout=10)  # stdout is closed: the reader ends
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get_nowait())
        return code, "".join(rest)


def call(url: str, path: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


DATA = random_laps(seed=2024, n_drivers=20)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, FeatureStore]]:
    root = tmp_path_factory.mktemp("served")
    store = laps_store(root, DATA)
    materialize(store)
    publish(store)
    server = Server(store.root)
    try:
        yield server, store
    finally:
        code, out = server.stop()
        store.close()
        assert code == 0 and "featurestore server stopped" in out


def _request(keys: list[int | None], features: list[str] | str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"entities": {"driver_id": keys}, "tier": "practice", **extra}
    body["feature_service" if isinstance(features, str) else "features"] = features
    return body


def test_answers_match_the_python_api_and_the_oracle(served: tuple[Server, FeatureStore]) -> None:
    server, store = served
    keys = [3, 1, 99, None, 3]
    at = T0 + dt.timedelta(hours=30)
    for as_of in (None, at):
        extra = {} if as_of is None else {"as_of": as_of.isoformat()}
        status, body = call(server.url, "/get-online-features", _request(keys, "lapset", **extra))
        assert status == 200, body
        assert body["metadata"]["feature_names"] == ["driver_id", "x", "n", "label"]
        assert body["metadata"]["tier"] == "practice"
        expected = store.get_online_features({"driver_id": keys}, "lapset", tier="practice",
                                             as_of=as_of, with_status=True)
        entity, *features = body["results"]
        assert entity["values"] == keys and set(entity["statuses"]) == {"PRESENT"}
        for name, result in zip(["x", "n", "label"], features, strict=True):
            assert result["values"] == expected[name].to_list()
            assert result["statuses"] == expected[f"{name}__status"].to_list()
        if as_of is not None:
            want = oracle(DATA, keys, at)
            assert [r["values"] for r in features] == [want["x"], want["n"], want["label"]]
            assert body["metadata"]["served_from"] == {"laps": "online+artifact"}
        else:
            assert body["metadata"]["served_from"] == {"laps": "online"}
    # Timestamps: the event time and availability of the row each value came from, in UTC.
    _, body = call(server.url, "/get-online-features", _request([1], ["x"]))
    newest = DATA.filter(pl.col("driver_id") == 1).sort("avail", "t").row(-1, named=True)
    assert body["results"][1]["event_timestamps"] == [newest["t"].isoformat() + "Z"]
    assert body["results"][1]["available_at"] == [newest["avail"].isoformat() + "Z"]


def test_full_feature_names_and_ttl(served: tuple[Server, FeatureStore]) -> None:
    server, _ = served
    status, body = call(server.url, "/get-online-features",
                        _request([1, 2], ["x"], full_feature_names=True, ttl="1h"))
    assert status == 200
    assert body["metadata"]["feature_names"] == ["driver_id", "laps__x"]
    # The data ended in 2025: a one-hour TTL makes every found value stale.
    assert set(body["results"][1]["statuses"]) <= {"OUTSIDE_MAX_AGE", "NOT_FOUND"}
    assert body["results"][1]["values"] == [None, None]


@pytest.mark.parametrize(("body", "status", "kind", "code"), [
    (_request([1], ["x"], tier="historical"), 403, "LeakageError", 3),
    ({"features": ["x"], "entities": {"driver_id": [1]}}, 400, "DefinitionError", 2),
    (_request([1], ["x"], tier="someday"), 400, "DefinitionError", 2),
    (_request([1], ["nope"]), 404, "NotFoundError", 7),
    (_request(["one"], ["x"]), 422, "DataError", 4),
    ({"features": ["x"], "entities": {"team": [1]}, "tier": "practice"}, 422, "DataError", 4),
    ({"features": ["x"], "entities": {"driver_id": [1], "race": [1, 2]}, "tier": "race"}, 422,
     "DataError", 4),
    (_request(list(range(MAX_KEYS + 1)), ["x"]), 413, "TooManyKeys", 2),
    ({"entities": {"driver_id": [1]}, "tier": "race"}, 422, "RequestValidationError", 2),
    ({"features": ["x"], "entities": {"driver_id": [1]}, "tier": "race", "colour": 1}, 422,
     "RequestValidationError", 2),
])
def test_errors_are_json_with_the_cli_classes(served: tuple[Server, FeatureStore], body: Any,
                                              status: int, kind: str, code: int) -> None:
    server, _ = served
    got, answer = call(server.url, "/get-online-features", body)
    assert (got, answer["error"]["type"], answer["error"]["exit_code"]) == (status, kind, code)
    assert answer["error"]["message"]
    if kind == "LeakageError":
        assert answer["error"]["features"] == ["x"]
        assert "x (tier practice)" in answer["error"]["message"]


def test_malformed_json_is_a_422(served: tuple[Server, FeatureStore]) -> None:
    server, _ = served
    status, answer = call(server.url, "/get-online-features", raw=b"{not json")
    assert status == 422 and answer["error"]["type"] == "RequestValidationError"


def test_health_features_and_openapi(served: tuple[Server, FeatureStore]) -> None:
    server, store = served
    assert call(server.url, "/health") == (200, {"status": "ok", "kind": "sqlite",
                                                 "online_store": f"sqlite:///{store.root / 'online.db'}"})
    _, listing = call(server.url, "/features")
    by_name = {f["name"]: f for f in listing["features"]}
    assert set(by_name) == {"x", "n", "label"}
    assert by_name["x"]["tier"] == "practice" and by_name["x"]["online"]["view_version"] == 1
    _, schema = call(server.url, "/openapi.json")
    post = schema["paths"]["/get-online-features"]["post"]
    props = post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"features", "feature_service", "entities", "tier", "as_of", "ttl"} <= set(props)
    assert {"200", "403", "413", "422"} <= set(post["responses"])


def test_many_concurrent_clients_get_correct_answers(served: tuple[Server, FeatureStore]) -> None:
    server, store = served
    rng = random.Random(5)
    requests = [([rng.randint(0, 22) for _ in range(rng.randint(1, 5))],
                 rng.choice([["x"], ["n", "label"], "lapset"])) for _ in range(320)]
    expected = {}
    for keys, features in requests:
        frame = store.get_online_features({"driver_id": keys}, features, tier="practice")
        expected[(tuple(keys), str(features))] = [frame[c].to_list() for c in frame.columns[1:]]

    def one(item: tuple[list[int], Any]) -> bool:
        keys, features = item
        status, body = call(server.url, "/get-online-features", _request(keys, features))
        return status == 200 and [r["values"] for r in body["results"][1:]] == \
            expected[(tuple(keys), str(features))]

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(one, requests))
    assert all(outcomes)


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    store = laps_store(tmp_path, DATA)
    materialize(store)
    publish(store)
    server = Server(store.root, "--graceful-timeout", "20")
    outcomes: list[str] = []
    stop_at = time.monotonic() + 30

    def client() -> None:
        while time.monotonic() < stop_at:
            try:
                status, body = call(server.url, "/get-online-features", _request([1, 2], ["x"]))
            except (ConnectionError, urllib.error.URLError, http.client.HTTPException) as exc:
                # Refused or closed before an answer started: the server had stopped listening.
                outcomes.append(f"gone:{type(getattr(exc, 'reason', exc)).__name__}")
                return
            outcomes.append("ok" if status == 200 and len(body["results"]) == 2 else f"bad:{status}")

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    while outcomes.count("ok") < 40 and time.monotonic() < stop_at:
        time.sleep(0.01)
    code, out = server.stop()
    for t in threads:
        t.join()
    assert code == 0 and "featurestore server stopped" in out
    assert outcomes.count("ok") >= 40
    assert [o for o in outcomes if not (o == "ok" or o.startswith("gone:"))] == []
    store.close()


@pytest.mark.slow
def test_a_redis_backed_server(tmp_path: Path) -> None:
    with redis_store_url() as url:
        _redis_backed_server(url, tmp_path)


def _redis_backed_server(redis_url: str, tmp_path: Path) -> None:
    store = laps_store(tmp_path, DATA, online_store=redis_url)
    materialize(store)
    publish(store)
    server = Server(store.root, "--online-store", redis_url)
    try:
        status, body = call(server.url, "/get-online-features", _request([1, 2, 3], "lapset"))
        assert status == 200 and body["metadata"]["served_from"] == {"laps": "online"}
        expected = store.get_online_features({"driver_id": [1, 2, 3]}, "lapset", tier="practice")
        assert [r["values"] for r in body["results"][1:]] == \
            [expected[c].to_list() for c in ("x", "n", "label")]
        health = call(server.url, "/health")[1]
        assert health["kind"] == "redis" and "prefix=" in health["online_store"]
    finally:
        code, _ = server.stop()
        store.close()
    assert code == 0
