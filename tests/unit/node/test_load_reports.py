"""A node's load report is gossiped to every node: only when it says something new."""

from __future__ import annotations

import pytest

from continuum.federation.distributed.core import load

QUIET = load.heartbeat(load.LoadInputs(0, 1.0, 2.0, 10))


def test_the_first_report_goes_out_and_an_unchanged_one_waits_for_the_keepalive() -> None:
    assert load.worth_reporting(None, QUIET, 0.0)
    same = load.heartbeat(load.LoadInputs(0, 1.2, 2.1, 10))  # jitter, not news
    assert not load.worth_reporting(QUIET, same, load.KEEPALIVE_SECONDS - 0.1)
    assert load.worth_reporting(QUIET, same, load.KEEPALIVE_SECONDS)


@pytest.mark.parametrize("inputs", [
    load.LoadInputs(64, 1.0, 2.0, 10),  # busier: the score moved
    load.LoadInputs(0, 40.0, 2.0, 10),  # the loop lags
    load.LoadInputs(0, 1.0, 9.0, 10),  # slower answers
    load.LoadInputs(0, 1.0, 2.0, 11),  # one more concept
])
def test_news_goes_out_at_once(inputs: load.LoadInputs) -> None:
    assert load.worth_reporting(QUIET, load.heartbeat(inputs), 0.5)
