"""Transform parameters declared once: the reference page matches the specs, every example
parses, and every typed parameter is validated by its spec with an error naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
from featurestore_plugins.falloff import parse_params as falloff_params
from featurestore_plugins.field import parse_params as field_params
from featurestore_plugins.rolling import parse_params as rolling_params

from featurestore.paramspec import REQUIRED, Param, ParamSpec, first_party_specs, reference
from featurestore.windowspec import parse_params as window_params

PARSERS = {"rolling": rolling_params, "window": window_params, "falloff": falloff_params,
           "field": field_params}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "transforms.md"
BAD = {"column": 3, "columns": "x", "int": 1.5, "number": "fast", "bool": "yes", "str": 1,
       "list": "x", "object": [1], "condition": "x"}


def test_reference_page_is_the_specs() -> None:
    assert DOCS.read_text() == reference(), (
        "docs/transforms.md differs from the transforms' specs: run "
        "`python -m featurestore.paramspec > docs/transforms.md`")


def test_every_first_party_transform_is_documented_with_every_param() -> None:
    from featurestore.plugins import DEFAULT_PLUGINS

    specs = first_party_specs()
    # Every built-in transform plugin (engines are built-in plugins too, but have no params).
    transforms = {m.rsplit(".", 1)[1] for m in DEFAULT_PLUGINS
                  if m.startswith("featurestore_plugins.")}
    assert transforms == set(specs)
    text = DOCS.read_text()
    for name, spec in specs.items():
        for s in (spec, *spec.nested):
            assert s.example is not None, f"{name}: {s.title} has no example"
            for p in s.params:
                assert f"| `{p.name}` |" in text and p.doc, (name, p.name)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_examples_parse(name: str) -> None:
    spec = first_party_specs()[name]
    PARSERS[name](spec.example)
    if name != "field":  # a field output is only valid inside `outputs`
        for nested in spec.nested:
            PARSERS[name](nested.example)


def _valid_base(name: str) -> dict:
    return dict(first_party_specs()[name].nested[0].example) if name in ("rolling", "window") \
        else dict(first_party_specs()[name].example)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_each_typed_param_is_checked_by_its_spec(name: str) -> None:
    spec = first_party_specs()[name]
    top = spec.nested[0] if name in ("rolling", "window") else spec
    for p in top.params:
        if p.type not in BAD:
            continue
        params = {**_valid_base(name), p.name: BAD[p.type]}
        with pytest.raises(ValueError, match=f"param '{p.name}"):
            PARSERS[name](params)


def test_spec_semantics() -> None:
    spec = ParamSpec("t", (
        Param("a", "int", "an int", default=2, low=1),
        Param("b", "int", "at most a", default=lambda v: v["a"], high="a", low=0),
        Param("c", "column", "needed", default=REQUIRED),
        Param("d", "number", "positive", default=None, low=0, exclusive_low=True),
    ))
    def fail(message: str) -> ValueError:
        return ValueError(message)
    assert spec.parse({"c": "x"}, fail) == {"a": 2, "b": 2, "c": "x", "d": None}
    with pytest.raises(ValueError, match=r"param 'b' must be an int >= 0, <= a \(2\), got 3"):
        spec.parse({"c": "x", "b": 3}, fail)
    with pytest.raises(ValueError, match="param 'c' is required: needed"):
        spec.parse({}, fail)
    with pytest.raises(ValueError, match=r"param 'd' must be a number > 0, got 0"):
        spec.parse({"c": "x", "d": 0}, fail)
    with pytest.raises(ValueError, match=r"unknown param\(s\) \['p.e'\]"):
        spec.parse({"c": "x", "e": 1}, fail, "p.")
    with pytest.raises(ValueError, match="param 'a' must be an int >= 1, got True"):
        spec.parse({"c": "x", "a": True}, fail)
