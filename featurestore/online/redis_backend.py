"""The Redis online store, chosen with a URL: ``redis://HOST:PORT/DB[?prefix=NAME]``.

Keys (``P`` is the prefix, by default ``featurestore:<store id>``)::

    P:meta:VIEW            string  ViewMeta JSON of the published version (its ``gen`` inside)
    P:e:VIEW:ENTITY        hash    generation -> payload ("" marks an entity removed in it)
    P:digest:VIEW          hash    entity -> "generation:digest" of its newest payload
    P:gen                  counter generations, never reused
    P:lock:VIEW            string  the publisher's lock (with an expiry)
    P:pending:VIEW         string  generation being written, until it is published
    P:touched:VIEW:GEN     set     entities written in that generation

Atomic publish without rewriting unchanged entities: a publish takes a new generation ``g``,
writes the changed entities' payloads as field ``g`` of their hashes (their old field stays),
then switches ``P:meta:VIEW`` to ``g`` in one command, and only then deletes the old fields. A
reader runs one Lua script (atomic, so one snapshot, and one round trip) that reads the meta and
takes, per entity, the newest field not newer than the meta's generation: before the switch
that is the old payload, after it the new one. A publish that died before its switch leaves fields newer
than the meta that no reader takes; the next publish removes them (``P:touched``) first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from featurestore.errors import DefinitionError, FeatureStoreError
from featurestore.online.base import MakeBatch, OnlineBackend, ViewMeta

CHUNK = 1000
LOCK_MS = 120_000
LOCK_WAIT_S = 300.0
_PREFIX_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0"""


def split_url(url: str, default_prefix: str) -> tuple[str, str]:
    """(connection URL without ``prefix``, key prefix)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", [default_prefix])[0]
    if not prefix or not set(prefix) <= _PREFIX_CHARS:
        raise DefinitionError(f"online store URL: prefix {prefix!r} may only hold letters, "
                              "digits and _.:-")
    rest = urlencode({k: v[0] for k, v in query.items()})
    return urlunsplit(parts._replace(query=rest)), prefix


# A reader's snapshot, in one atomic script: each view's meta, then for each entity the payload
# of the newest generation not newer than the meta's ("" marks a removed entity: nil).
_READ = """
local nv = tonumber(ARGV[1])
local out, at = {}, nv + 1
for v = 1, nv do
  local meta = redis.call('GET', KEYS[v])
  out[#out + 1] = meta or false
  local gen = meta and tonumber(string.match(meta, '"gen":(%d+)')) or -1
  for _ = 1, tonumber(ARGV[v + 1]) do
    local payload, best = false, -1
    if meta then
      local fields = redis.call('HGETALL', KEYS[at])
      for j = 1, #fields, 2 do
        local g = tonumber(fields[j])
        if g > best and g <= gen then best, payload = g, fields[j + 1] end
      end
    end
    if payload == '' then payload = false end
    out[#out + 1] = payload
    at = at + 1
  end
end
return out
"""


class RedisBackend(OnlineBackend):
    kind = "redis"

    def __init__(self, url: str, default_prefix: str) -> None:
        try:
            import redis
        except ImportError:
            raise FeatureStoreError("the Redis online store needs the redis client: "
                                    "pip install 'featurestore[redis]'") from None
        conn_url, self.prefix = split_url(url, default_prefix)
        self.client: Any = redis.Redis.from_url(conn_url, decode_responses=True,
                                                socket_timeout=30, socket_connect_timeout=5)
        shown = urlsplit(conn_url)
        host = shown.hostname or "localhost"
        netloc = f"{host}:{shown.port}" if shown.port else host
        self.url = urlunsplit(shown._replace(netloc=netloc, query=f"prefix={self.prefix}"))
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        self._read = self.client.register_script(_READ)

    def _k(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    @contextmanager
    def _failures(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise FeatureStoreError(f"online store {self.url}: {what} failed ({exc})") from None

    def close(self) -> None:
        self.client.close()

    def ping(self) -> None:
        with self._failures("ping"):
            self.client.ping()

    # ------------------------------------------------------------------ reads
    def read(self, wanted: Sequence[tuple[str, Sequence[str]]]
             ) -> dict[str, tuple[str | None, dict[str, str]]]:
        keys = [self._k("meta", view) for view, _ in wanted]
        for view, entity_keys in wanted:
            keys += [self._k("e", view, k) for k in entity_keys]
        args = [len(wanted), *[len(k) for _, k in wanted]]
        with self._failures("read"):
            replies = self._read(keys=keys, args=args)
        out: dict[str, tuple[str | None, dict[str, str]]] = {}
        i = 0
        for view, entity_keys in wanted:
            meta_text = replies[i]
            i += 1
            payloads = {k: p for k, p in zip(entity_keys, replies[i:i + len(entity_keys)],
                                             strict=True) if p is not None}
            i += len(entity_keys)
            out[view] = (meta_text, payloads)
        return out

    def metas(self) -> dict[str, ViewMeta]:
        with self._failures("listing published views"):
            names = sorted(self.client.scan_iter(match=self._k("meta", "*"), count=500))
            texts = self.client.mget(names) if names else []
        return {ViewMeta.from_json(t).view: ViewMeta.from_json(t) for t in texts if t}

    # ------------------------------------------------------------------ writes
    @contextmanager
    def _lock(self, view: str) -> Iterator[str]:
        key, token = self._k("lock", view), uuid.uuid4().hex
        deadline = time.monotonic() + LOCK_WAIT_S
        while not self.client.set(key, token, nx=True, px=LOCK_MS):
            if time.monotonic() > deadline:
                raise FeatureStoreError(f"online store {self.url}: view {view!r} stayed locked by "
                                        f"another publish for {LOCK_WAIT_S:.0f} s")
            time.sleep(0.05)
        try:
            yield token
        finally:
            self.client.eval(_RELEASE, 1, key, token)

    def _renew(self, view: str, token: str) -> None:
        key = self._k("lock", view)
        if self.client.get(key) != token:
            raise FeatureStoreError(f"online store {self.url}: lost the publish lock of view "
                                    f"{view!r} (it expired); nothing was switched")
        self.client.pexpire(key, LOCK_MS)

    def _recover(self, view: str, meta: ViewMeta | None) -> None:
        """Remove what a publish that died before its switch left behind."""
        pending = self.client.get(self._k("pending", view))
        if pending is None or (meta is not None and meta.gen == int(pending)):
            self.client.delete(self._k("pending", view))
            return
        touched = self._k("touched", view, pending)
        keys = list(self.client.sscan_iter(touched, count=CHUNK))
        for i in range(0, len(keys), CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for key in keys[i:i + CHUNK]:
                pipe.hdel(self._k("e", view, key), pending)
            pipe.execute()
        self.client.delete(touched, self._k("pending", view))

    def publish(self, view: str, make: MakeBatch) -> ViewMeta | None:
        with self._failures(f"publish of view {view!r}"), self._lock(view) as token:
            text = self.client.get(self._k("meta", view))
            old = ViewMeta.from_json(text) if text else None
            self._recover(view, old)
            if old is None:
                self._delete_entities(view)  # leftovers of a lost meta must not resurface
            raw = self.client.hgetall(self._k("digest", view)) if old is not None else {}
            old_gens = {k: v.partition(":")[0] for k, v in raw.items()}
            batch = make(old, {k: v.partition(":")[2] for k, v in raw.items()})
            if batch is None:
                return None
            gen = int(self.client.incr(self._k("gen")))
            self.client.set(self._k("pending", view), gen)
            touched = self._k("touched", view, gen)
            writes = [(k, p) for k, _, p in batch.upserts] + [(k, "") for k in batch.removals]
            for i in range(0, len(writes), CHUNK):
                pipe = self.client.pipeline(transaction=True)
                chunk = writes[i:i + CHUNK]
                pipe.sadd(touched, *[k for k, _ in chunk])
                for key, payload in chunk:
                    pipe.hset(self._k("e", view, key), str(gen), payload)
                pipe.execute()
                self._renew(view, token)
            meta = replace(batch.meta, gen=gen)
            pipe = self.client.pipeline(transaction=True)  # the switch
            pipe.set(self._k("meta", view), meta.to_json())
            pipe.delete(self._k("pending", view))
            pipe.execute()
            # Old fields are no reader's anymore: the meta now names a newer generation.
            for i in range(0, len(batch.upserts), CHUNK):
                pipe = self.client.pipeline(transaction=False)
                for key, digest, _ in batch.upserts[i:i + CHUNK]:
                    if key in old_gens and old_gens[key] != str(gen):
                        pipe.hdel(self._k("e", view, key), old_gens[key])
                    pipe.hset(self._k("digest", view), key, f"{gen}:{digest}")
                pipe.execute()
            for i in range(0, len(batch.removals), CHUNK):
                pipe = self.client.pipeline(transaction=False)
                chunk = batch.removals[i:i + CHUNK]
                pipe.delete(*[self._k("e", view, k) for k in chunk])
                pipe.hdel(self._k("digest", view), *chunk)
                pipe.execute()
            self.client.delete(touched)
            return meta

    def drop(self, view: str) -> bool:
        with self._failures(f"unpublish of view {view!r}"), self._lock(view):
            found = bool(self.client.delete(self._k("meta", view)))  # readers stop here
            self._delete_entities(view)
            return found

    def _delete_entities(self, view: str) -> None:
        for pattern in (self._k("e", view, "*"), self._k("touched", view, "*")):
            batch: list[str] = []
            for key in self.client.scan_iter(match=pattern, count=CHUNK):
                batch.append(key)
                if len(batch) >= CHUNK:
                    self.client.delete(*batch)
                    batch = []
            if batch:
                self.client.delete(*batch)
        self.client.delete(self._k("digest", view), self._k("pending", view))
