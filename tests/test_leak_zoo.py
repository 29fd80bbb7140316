"""The leak zoo: look-ahead transforms that hide at rare rows are caught on every dataset, and
safe look-alikes never are (transforms and data in ``tests/leakzoo.py``).

Each seed's three datasets (rare situations at 0.1 %, 1 % and 10 % of at least 100k rows) are
made once and shared by every transform; verification runs with its default budget and samples,
the way the materializer runs it. The suite runs the 13 leaks of ``leakzoo.TESTED`` on 20 seeds
(780 verifications); ``python benchmarks/leak_zoo.py`` runs all of them, and the controls on
every seed at the default budget, and prints the catch table.
"""

from __future__ import annotations

import pytest

from tests import leakzoo

pytestmark = pytest.mark.slow

CONTROL_BUDGET = 100_000
"""Rows for the controls' verification here: about one full run each, which still checks every
cut category (the benchmark runs them at the default budget)."""


def test_the_zoo_is_big_enough():
    tested = [leakzoo.LEAKS[name] for name in leakzoo.TESTED]
    assert len(tested) >= 12 and len(leakzoo.CONTROLS) >= 10
    assert sum(c.transform.scope == "group" for c in tested) >= 2
    assert sum(c.transform.scope == "group" for c in leakzoo.CONTROLS.values()) >= 1
    for rate in leakzoo.RATES:
        frame = leakzoo.laps(0, rate)
        assert frame.height >= 100_000
        assert frame["lap_time"].null_count() >= max(2, 0.8 * rate * frame.height)
        assert frame["pit"].sum() >= max(2, 0.8 * rate * frame.height)
        assert (frame.group_by("driver_id", "race_id").len()["len"] < leakzoo.LAPS).sum() >= 2


@pytest.mark.parametrize("seed", range(20))
def test_every_leak_is_caught(seed: int) -> None:
    outcomes = list(leakzoo.run([seed], leaks=leakzoo.TESTED, controls=[]))
    assert len(outcomes) == len(leakzoo.TESTED) * len(leakzoo.RATES)
    missed = [f"{o.name} at rate {o.rate}: {o.message}" for o in outcomes if not o.caught]
    assert not missed, "\n".join(missed)
    for o in outcomes:
        assert f"transform {o.name!r}" in o.message and "feature 'f'" in o.message, o.message
        assert "driver_id=" in o.message and "on the full input but" in o.message, o.message


@pytest.mark.parametrize("seed", [0, 1])
def test_no_control_is_flagged(seed: int) -> None:
    outcomes = list(leakzoo.run([seed], leaks=[], control_budget=CONTROL_BUDGET))
    assert len(outcomes) == len(leakzoo.CONTROLS) * len(leakzoo.RATES)
    flagged = [f"{o.name} at rate {o.rate}: {o.message}" for o in outcomes if o.caught]
    assert not flagged, "\n".join(flagged)
    assert all(o.mode == "targeted" for o in outcomes)
