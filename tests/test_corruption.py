"""A damaged artifact never yields a value: it is an ``ArtifactError`` (exit 5) naming the file.

Every read checks the file against its recorded sha256 before the Parquet reader sees a byte of
it (a reader fed garbage may return wrong numbers, panic, or abort the process); a per-user
cache keyed by inode, size, mtime and ctime makes repeat reads cost a ``stat``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from featurestore import ArtifactError, FeatureStore
from featurestore import checksums as checksum_cache
from featurestore.artifacts import reading_artifacts, verify_artifact
from tests.safetykit import build_store, cli_env, fs, ok, one_error_line, write_entities

FEATURES = "finish_mean_last_3,finish_max_last_10,finish_max_last_3,finish_mean_last_10"
N_POSITIONS = 50


def positions(size: int, footer_len: int) -> list[int]:
    """50 deterministic byte positions: 30 spread over the whole file (header magic, pages,
    footer), 16 spread over the footer (the Thrift metadata), the 4 footer-length bytes."""
    spread = [round(i * (size - 1) / 29) for i in range(30)]
    footer_start = size - 8 - footer_len
    footer = [footer_start + round(i * (footer_len - 1) / 15) for i in range(16)]
    length = [size - 8 + i for i in range(4)]
    picked = list(dict.fromkeys(spread + footer + length))
    k = 1
    while len(picked) < N_POSITIONS:  # overlaps (tiny files): fill in deterministically
        if k not in picked:
            picked.append(k)
        k += 7
    return picked[:N_POSITIONS]


def footer_length(path: Path) -> int:
    data = path.read_bytes()
    assert data[:4] == b"PAR1" and data[-4:] == b"PAR1"
    return int.from_bytes(data[-8:-4], "little")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One SQLite store with a real rolling view; baseline retrieve and online outputs."""
    base = tmp_path_factory.mktemp("corruption")
    root = base / "store"
    build_store(root)
    entities = write_entities(base / "entities.parquet")
    store = FeatureStore.open(root)
    art = store.registry.latest_artifact("view", "form")
    store.close()
    assert art is not None
    retrieve = ["--store", str(root), "retrieve", "--entities", str(entities), "--features",
                FEATURES, "--tier", "historical"]
    online = ["--store", str(root), "online", "--tier", "historical", "--key", "driver_id=3", "--key", "driver_id=17",
              "--key", "driver_id=99", "--features", FEATURES, "--json",
              "--as-of", "2024-09-15T12:00:00+00:00"]
    ok(fs(*retrieve, "-o", str(base / "baseline.parquet")))
    baseline_online = json.loads(ok(fs(*online)).stdout)
    assert any(r["finish_mean_last_3"] is not None for r in baseline_online)
    return {"base": base, "root": root, "path": root / art["path"], "art": art,
            "retrieve": retrieve, "online": online,
            "baseline": pl.read_parquet(base / "baseline.parquet"),
            "baseline_online": baseline_online}


def check_outcome(built: dict[str, Any], pos: int, verb: str, code: int, err: str,
                  out_file: Path | None, stdout: str) -> str:
    """Exit 5 with one line naming the artifact, or exit 0 with exactly the baseline."""
    where = f"byte {pos} flipped, {verb}"
    assert code in (0, 5), f"{where}: exit {code}\n{err}"
    if code == 5:
        line = one_error_line(err)
        assert built["art"]["path"] in line, f"{where}: error does not name the file: {line}"
        return "refused"
    if verb == "retrieve":
        assert out_file is not None
        assert pl.read_parquet(out_file).equals(built["baseline"]), f"{where}: wrong values"
    else:
        assert json.loads(stdout) == built["baseline_online"], f"{where}: wrong values"
    return "equal"


@pytest.mark.slow
def test_one_flipped_byte_at_50_positions_never_yields_a_wrong_value(
        built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI's own entry point, one forked process per invocation (tests/forkcli.py)."""
    path: Path = built["path"]
    original = path.read_bytes()
    picked = positions(len(original), footer_length(path))
    assert len(picked) == N_POSITIONS and picked[0] == 0 and len(original) - 1 in picked
    jobs = []
    for pos in picked:
        runs = [{"argv": [*built["retrieve"], "-o", str(tmp_path / f"r{pos}.parquet")],
                 "out": str(tmp_path / f"r{pos}.out"), "err": str(tmp_path / f"r{pos}.err")},
                {"argv": built["online"], "out": str(tmp_path / f"o{pos}.out"),
                 "err": str(tmp_path / f"o{pos}.err")}]
        jobs.append({"file": str(path), "pos": pos, "runs": runs})
    warmup = ["--store", str(built["root"]), "list", "--json"]
    (tmp_path / "jobs.json").write_text(json.dumps({"warmup": warmup, "jobs": jobs}))
    driver = Path(__file__).with_name("forkcli.py")
    proc = subprocess.run([sys.executable, str(driver), str(tmp_path / "jobs.json"),
                           str(tmp_path / "results.json")], env=cli_env(), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    assert path.read_bytes() == original  # the driver put every byte back
    outcomes: dict[str, int] = {}
    for result in json.loads((tmp_path / "results.json").read_text()):
        pos = result["pos"]
        for verb, code in zip(("retrieve", "online"), result["codes"], strict=True):
            stem = ("r" if verb == "retrieve" else "o") + str(pos)
            out = (tmp_path / f"{stem}.out").read_text()
            err = (tmp_path / f"{stem}.err").read_text()
            kind = check_outcome(built, pos, verb, code, err,
                                 tmp_path / f"r{pos}.parquet" if verb == "retrieve" else None, out)
            outcomes[kind] = outcomes.get(kind, 0) + 1
    with capsys.disabled():
        print(f"\n[corruption] {N_POSITIONS} positions x 2 verbs of a {len(original)}-byte "
              f"artifact: {outcomes}")
    assert outcomes.get("refused", 0) >= 2 * N_POSITIONS - 2  # sha256 sees every flip


def test_flipped_bytes_through_the_featurestore_executable(built: dict[str, Any],
                                                           tmp_path: Path) -> None:
    """The installed console script itself, at the header and the footer."""
    path: Path = built["path"]
    original = path.read_bytes()
    size = len(original)
    exe = Path(sys.executable).with_name("featurestore")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "featurestore"]
    try:
        for pos in (1, size - 6):  # header magic; footer length
            data = bytearray(original)
            data[pos] ^= 0xFF
            path.write_bytes(bytes(data))
            out = tmp_path / f"x{pos}.parquet"
            for verb, argv in (("retrieve", [*built["retrieve"], "-o", str(out)]),
                               ("online", built["online"])):
                proc = subprocess.run([*command, *argv], env=cli_env(), capture_output=True,
                                      text=True, timeout=180)
                assert check_outcome(built, pos, verb, proc.returncode, proc.stderr, out,
                                     proc.stdout) == "refused"
    finally:
        path.write_bytes(original)


def wait_for_clock_tick(path: Path) -> None:
    """Sleep until the file system's clock has moved past ``path``'s ctime."""
    probe = path.with_name(".tick")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe.write_bytes(b"x")
        if os.stat(probe).st_ctime_ns > os.stat(path).st_ctime_ns:
            probe.unlink()
            return
        time.sleep(0.01)
    raise AssertionError("file times never moved")


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Remember verifications at once (the racy window is what delays it in real use), in a
    cache folder of this test's own, with the in-memory set of this process emptied."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(checksum_cache.CACHE_ENV, str(cache))
    monkeypatch.setattr(checksum_cache, "RACY_SECONDS", -1.0)
    monkeypatch.setattr(checksum_cache, "_memory", set())
    return cache


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    hashed: list[Path] = []
    real = checksum_cache.file_checksum

    def counting(path: Path) -> str:
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(checksum_cache, "file_checksum", counting)
    return hashed


def test_a_remembered_verification_never_covers_a_later_write(
        built: dict[str, Any], no_racy_window: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path: Path = built["path"]
    art = built["art"]
    hashed = count_hashes(monkeypatch)
    verify_artifact(built["root"], art)
    assert hashed == [path]
    verify_artifact(built["root"], art)
    assert hashed == [path]  # remembered: no second hash
    markers = list(no_racy_window.rglob("*"))
    assert any(m.is_file() for m in markers)  # on disk, for the next process
    monkeypatch.setattr(checksum_cache, "_memory", set())  # as a new process would start
    verify_artifact(built["root"], art)
    assert hashed == [path]  # the marker answered
    original = path.read_bytes()
    stat = os.stat(path)
    wait_for_clock_tick(path)
    try:
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        # The tamperer even puts the modification time back: ctime still moved.
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert os.stat(path).st_mtime_ns == stat.st_mtime_ns
        with pytest.raises(ArtifactError, match="checksum"):
            verify_artifact(built["root"], art)
        assert len(hashed) == 2
    finally:
        path.write_bytes(original)


def test_the_cache_tolerates_deleted_files_and_an_unwritable_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    build_store(root)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv(checksum_cache.CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(checksum_cache, "RACY_SECONDS", -1.0)
    monkeypatch.setattr(checksum_cache, "_memory", set())
    monkeypatch.setattr(checksum_cache, "_disk_failed", set())
    with FeatureStore.open(root) as store:
        entities = pl.DataFrame({"driver_id": [3], "event_timestamp": [
            dt.datetime(2024, 9, 1, tzinfo=dt.UTC)]})
        first = store.get_historical_features(entities, FEATURES.split(","), tier="historical")
        again = store.get_historical_features(entities, FEATURES.split(","), tier="historical")
        assert first.equals(again) and first["finish_mean_last_3"].null_count() == 0
        art = store.registry.latest_artifact("view", "form")
        assert art is not None
        (root / art["path"]).unlink()  # as `gc` would: the remembered entry matches nothing
        with pytest.raises(ArtifactError, match="file is missing"):
            store.get_historical_features(entities, FEATURES.split(","), tier="historical")


def test_engine_panics_become_artifact_errors_naming_the_file(tmp_path: Path) -> None:
    panic = pl.exceptions.PanicException
    assert not issubclass(panic, Exception)  # why a plain `except Exception` is not enough
    target = tmp_path / "x.parquet"
    with (pytest.raises(ArtifactError, match=r"x\.parquet.*PanicException: boom"),
          reading_artifacts([target])):
        raise panic("boom")
    with (pytest.raises(ArtifactError, match=r"x\.parquet.*out of specification"),
          reading_artifacts([target])):
        raise pl.exceptions.ComputeError("parquet: File out of specification: invalid utf8")
    with pytest.raises(ValueError, match="unrelated"), reading_artifacts([target]):
        raise ValueError("unrelated")  # not a reading failure: left alone


def test_a_rewritten_artifact_is_refused_before_the_reader_sees_it(built: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    """A same-size garbage file (footer included): the checksum refuses it, nothing parses it."""
    path: Path = built["path"]
    original = path.read_bytes()
    try:
        body = (b"PAR1" + bytes(range(256)) * (len(original) // 256 + 1))[:len(original) - 8]
        path.write_bytes(body + (200).to_bytes(4, "little") + b"PAR1")
        assert path.stat().st_size == len(original)
        proc = fs(*built["online"])
        assert proc.returncode == 5
        assert "checksum" in one_error_line(proc.stderr)
    finally:
        path.write_bytes(original)
