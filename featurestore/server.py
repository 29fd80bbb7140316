"""The HTTP feature server (``featurestore serve``): FastAPI on uvicorn.

Why this stack: FastAPI (on Starlette) is the most used ASGI framework in Python, actively
maintained, and generates the OpenAPI schema from the typed request model that also validates
requests; uvicorn (with uvloop and httptools from its ``standard`` extra) is the reference ASGI
server, and on SIGINT/SIGTERM stops accepting connections and lets requests in flight finish
before the app's shutdown runs. It is also the stack Feast's Python feature server uses, so its
users know how to deploy and probe it.

Endpoints: ``POST /get-online-features`` (Feast's request shape plus ``tier``), ``GET /health``,
``GET /features``, ``GET /openapi.json``. Errors are JSON bodies
``{"error": {"type", "message", "exit_code"[, "features"]}}`` whose ``type`` and ``exit_code``
are those of the CLI; the HTTP status follows the class (see ``STATUS``).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the request model's annotations
# at run time, and the models are defined inside ``create_app`` (pydantic is an optional extra).
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.errors import (
    ArtifactError,
    DataError,
    DefinitionError,
    FeatureStoreError,
    LeakageError,
    NotFoundError,
    PluginError,
)
from featurestore.online.base import PRESENT, decode_series, storage_dtype

if TYPE_CHECKING:
    from fastapi import FastAPI

    from featurestore.online.lookup import OnlineReader, OnlineResult
    from featurestore.store import FeatureStore

DEFAULT_PORT = 6566
DEFAULT_MAX_KEYS = 1000
# HTTP status per error class; the body carries the CLI's exit code as well.
STATUS: dict[type[FeatureStoreError], int] = {
    DefinitionError: 400, LeakageError: 403, NotFoundError: 404, DataError: 422,
    ArtifactError: 500, PluginError: 500, FeatureStoreError: 500}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENTITY_TIMESTAMP = "1970-01-01T00:00:00Z"  # what Feast reports for entity key columns
_MISSING: Any = object()


class TooManyKeys(DefinitionError):
    """More entity rows in one request than the server allows."""


STATUS[TooManyKeys] = 413


def error_body(exc: FeatureStoreError) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc).strip().splitlines()[0]
                            if str(exc).strip() else type(exc).__name__, "exit_code": exc.exit_code}
    features = getattr(exc, "features", None)
    if features:
        body["features"] = list(features)
    return {"error": body}


def status_for(exc: FeatureStoreError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def iso_us(us: int | None) -> str | None:
    if us is None:
        return None
    return (_EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


def _json_float(v: float) -> float | str:
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def json_values(values: list[Any], dtype: pl.DataType) -> list[Any]:
    """Stored values as JSON-ready Python values: floats stay numbers (non-finite ones become
    "NaN"/"Infinity"/"-Infinity", as in protobuf's JSON), temporal values ISO 8601 text."""
    if dtype.is_float():
        return [v if v is None else _json_float(v) for v in values]
    if dtype == storage_dtype(dtype):
        return values
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None and dtype.time_unit == "us":
        return [iso_us(v) for v in values]
    return decode_series("v", values, dtype).to_list()


def feast_response(result: "OnlineResult", entities: dict[str, list[Any]],
                   full_feature_names: bool) -> dict[str, Any]:
    """A response in the shape of Feast's feature server, with our additions."""
    names = list(entities)
    results: list[dict[str, Any]] = []
    stamps: dict[int | None, str | None] = {None: None}  # features of a view share their rows'

    def iso(values: list[int | None]) -> list[str | None]:
        out = []
        for v in values:
            text = stamps.get(v, _MISSING)
            if text is _MISSING:
                text = stamps[v] = iso_us(v)
            out.append(text)
        return out

    for values in entities.values():
        results.append({"values": values, "statuses": [PRESENT] * result.n,
                        "event_timestamps": [_ENTITY_TIMESTAMP] * result.n})
    for name in result.names:
        names.append(f"{result.views[name]}__{name}" if full_feature_names else name)
        results.append({
            "values": json_values(result.values[name], result.dtypes[name]),
            "statuses": result.statuses[name],
            "event_timestamps": iso(result.event_timestamp[name]),
            "available_at": iso(result.available_at[name])})
    return {"metadata": {"feature_names": names, "tier": result.tier,
                         "as_of": iso_us(result.as_of_us), "served_from": result.served_from},
            "results": results}


def create_app(store: "FeatureStore", *, max_keys: int = DEFAULT_MAX_KEYS,
               registry_ttl: float | None = None, reader: "OnlineReader | None" = None,
               on_ready: "Callable[[], None] | None" = None) -> "FastAPI":
    """The ASGI app serving ``store``. ``on_ready`` runs at startup (the server's signal
    handlers are in place by then); closing the store is the app's shutdown."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, Response
        from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
        from pydantic_core import to_json
        from starlette.concurrency import run_in_threadpool
        from starlette.routing import Route
    except ImportError:
        raise FeatureStoreError("featurestore serve needs FastAPI and uvicorn: "
                                "pip install 'featurestore[serve]'") from None
    from featurestore import __version__
    from featurestore.online import reader_for
    from featurestore.online.lookup import NeedsArtifact

    online = reader or reader_for(store)
    if registry_ttl is not None:
        online.registry_ttl = registry_ttl

    class OnlineFeaturesRequest(BaseModel):
        """Feature values for entity rows at one request time (Feast's shape plus ``tier``)."""

        model_config = ConfigDict(extra="forbid")
        features: list[str] | None = Field(
            None, description="Feature references: name, name@version or view:name.")
        feature_service: str | None = Field(
            None, description="A feature set's name (instead of features).")
        entities: dict[str, list[Any]] = Field(
            description="Join-key columns, one list per key column, all of one length.")
        tier: str | None = Field(
            None, description="Tier of the prediction point; required unless the store "
                              "setting setting.default_tier is set.")
        as_of: datetime | None = Field(
            None, description="Request time (ISO 8601; naive means UTC). Default: now.")
        ttl: str | float | None = Field(
            None, description="Values available longer ago than this are null with status "
                              "OUTSIDE_MAX_AGE: '30d', '12h' or seconds.")
        inclusive: bool = Field(False, description="Serve values available exactly at as_of.")
        allow_unverified: bool = Field(
            False, description="Serve views materialized without causality verification.")
        full_feature_names: bool = Field(
            False, description="Name features view__feature in the response.")

        @model_validator(mode="after")
        def one_source(self) -> "OnlineFeaturesRequest":
            if (self.features is None) == (self.feature_service is None):
                raise ValueError("give exactly one of 'features' or 'feature_service'")
            return self

    class ValueList(BaseModel):
        values: list[Any]
        statuses: list[str]
        event_timestamps: list[str | None]
        available_at: list[str | None] | None = None

    class OnlineFeaturesResponse(BaseModel):
        metadata: dict[str, Any]
        results: list[ValueList]

    class ErrorBody(BaseModel):
        type: str
        message: str
        exit_code: int
        features: list[str] | None = None

    class ErrorResponse(BaseModel):
        error: ErrorBody

    @asynccontextmanager
    async def lifespan(_app: "FastAPI") -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        yield
        store.close()  # after uvicorn let the requests in flight finish

    app = FastAPI(title="featurestore feature server", version=__version__, lifespan=lifespan,
                  description="Online feature values under the tier, availability and TTL "
                              "rules of the featurestore retrieval contract.")
    errors = {code: {"model": ErrorResponse} for code in (400, 403, 404, 413, 422, 500)}

    @app.exception_handler(FeatureStoreError)
    async def feature_store_error(_request: Request, exc: FeatureStoreError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            problems.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        body = {"error": {"type": "RequestValidationError", "exit_code": 2,
                          "message": "invalid request: " + "; ".join(problems)}}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        body = {"error": {"type": "InternalError", "exit_code": 1,
                          "message": f"internal error {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}"}}
        return JSONResponse(body, status_code=500)

    schema = OnlineFeaturesRequest.model_json_schema()

    @app.post("/get-online-features", response_model=OnlineFeaturesResponse, responses=errors,
              summary="Feature values for entity rows",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": schema}}}})
    async def get_online_features(http: Request) -> Response:
        # The body is JSON whatever the Content-Type says (curl -d sends a form type), parsed
        # and validated in one step by pydantic.
        try:
            request = OnlineFeaturesRequest.model_validate_json(await http.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        lengths = {len(v) for v in request.entities.values()}
        if len(lengths) > 1:
            raise DataError("entities: key columns have different lengths "
                            f"({', '.join(f'{k}={len(v)}' for k, v in request.entities.items())})")
        n = lengths.pop() if lengths else 0
        if n > max_keys:
            raise TooManyKeys(f"{n} entity rows in one request; this server allows at most "
                              f"{max_keys} (featurestore serve --max-keys)")
        features: str | list[str] = request.feature_service or request.features or []
        kwargs: dict[str, Any] = {
            "tier": request.tier, "as_of": request.as_of, "ttl": request.ttl,
            "inclusive": request.inclusive, "allow_unverified": request.allow_unverified}
        try:
            # The online store answers in well under a millisecond: on the event loop.
            result = online.lookup(request.entities, features, allow_artifact=False, **kwargs)
        except NeedsArtifact:
            # Reading an artifact takes milliseconds: off the loop, so others are served.
            result = await run_in_threadpool(online.lookup, request.entities, features, **kwargs)
        body = feast_response(result, request.entities, request.full_feature_names)
        # pydantic's Rust encoder: several times faster than json.dumps on these bodies.
        return Response(to_json(body, fallback=_json_default), media_type="application/json")

    # The same endpoint as a plain Starlette route, matched first: it skips FastAPI's
    # dependency resolution (about 50 us a request, a fifth of the whole). The FastAPI route
    # above stays for the OpenAPI schema; errors go through the same exception handlers.
    app.router.routes.insert(0, Route("/get-online-features", get_online_features,
                                      methods=["POST"]))

    @app.get("/health", summary="Liveness and readiness")
    def health() -> JSONResponse:
        try:
            online.backend.ping()
            store.registry.info("store_id")
        except FeatureStoreError as exc:
            return JSONResponse({"status": "unavailable", **error_body(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "online_store": online.backend.url,
                             "kind": online.backend.kind})

    @app.get("/features", summary="Registered features and their online state")
    def features(tier: str | None = None) -> JSONResponse:
        published = online.backend.metas()
        out = []
        for row in store.list("feature", tier=tier):
            meta = published.get(row["view"])
            out.append({
                "name": row["name"], "version": row["version"], "view": row["view"],
                "entity": row["entity"], "dtype": row["dtype"], "tier": row["tier"],
                "description": row["description"], "tags": row["tags"],
                "online": None if meta is None else {
                    "view_version": meta.view_version, "artifact_id": meta.artifact_id,
                    "published_at": meta.published_at, "entities": meta.entities,
                    "verified": meta.verified}})
        return JSONResponse({"features": out})

    return app
