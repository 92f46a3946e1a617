"""``/v1/route`` query strings become typed ``select_node`` criteria."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from continuum.federation.distributed import api
from continuum.federation.distributed.core import balancing


def test_query_values_are_typed_as_the_criteria_expect() -> None:
    query = MultiDict([("max_load", "0.5"), ("max_latency_ms", "20"), ("exclude", "node-1"),
                       ("exclude", "node-2,node-3"), ("include", "node-4"),
                       ("min_capacity.concepts", "1000"), ("metadata.region", "eu"),
                       ("metadata.raft", "true")])
    criteria = api.route_criteria(query)
    assert criteria == {"max_load": 0.5, "max_latency_ms": 20.0,
                        "exclude": ["node-1", "node-2", "node-3"], "include": ["node-4"],
                        "min_capacity": {"concepts": 1000.0},
                        "metadata": {"region": "eu", "raft": True}}
    parsed = balancing.Criteria.parse(criteria)
    assert parsed is not None and parsed.max_load == 0.5
    assert parsed.exclude == frozenset({"node-1", "node-2", "node-3"})


@pytest.mark.parametrize("query", [{"max_load": "half"}, {"max_latency_ms": "inf"},
                                   {"min_capacity.concepts": "many"}])
def test_a_bad_number_is_a_clear_error(query: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="must be a"):
        api.route_criteria(query)


def test_unknown_names_reach_the_criteria_check() -> None:
    with pytest.raises(ValueError, match="unknown criteria"):
        balancing.Criteria.parse(api.route_criteria({"colour": "red"}))
