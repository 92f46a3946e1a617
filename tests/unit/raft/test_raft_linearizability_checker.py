"""The linearizability checker itself: known-good and known-bad histories."""

from __future__ import annotations

from checkers.linearizability import Op, check


def test_sequential_history_is_linearizable() -> None:
    h = [Op(1, 2, "put", "k", "a"), Op(3, 4, "get", "k", "a"), Op(5, 6, "put", "k", "b"),
         Op(7, 8, "get", "k", "b")]
    assert check(h) == (True, None)


def test_stale_read_after_completed_write_is_not() -> None:
    h = [Op(1, 2, "put", "k", "a"), Op(3, 4, "put", "k", "b"), Op(5, 6, "get", "k", "a")]
    assert check(h) == (False, "k")


def test_concurrent_ops_may_order_either_way() -> None:
    h = [Op(1, 10, "put", "k", "a"), Op(2, 9, "get", "k", "a"), Op(3, 8, "get", "k", None)]
    assert check(h)[0]


def test_read_of_a_value_never_written_is_not() -> None:
    assert check([Op(1, 2, "get", "k", "zzz")]) == (False, "k")


def test_unknown_put_may_or_may_not_take_effect() -> None:
    took = [Op(1, None, "put", "k", "a"), Op(5, 6, "get", "k", "a")]
    did_not = [Op(1, None, "put", "k", "a"), Op(5, 6, "get", "k", None)]
    assert check(took)[0] and check(did_not)[0]


def test_unknown_put_cannot_take_effect_before_its_call() -> None:
    h = [Op(1, 2, "get", "k", "a"), Op(3, None, "put", "k", "a")]
    assert check(h) == (False, "k")


def test_a_value_read_back_after_it_was_overwritten_is_not() -> None:
    # A duplicate application of put(a) after put(b) shows as exactly this.
    h = [Op(1, 2, "put", "k", "a"), Op(3, 4, "put", "k", "b"), Op(5, 6, "get", "k", "b"),
         Op(7, 8, "get", "k", "a")]
    assert not check(h)[0]


def test_keys_are_independent() -> None:
    h = [Op(1, 2, "put", "x", "1"), Op(3, 4, "put", "y", "2"), Op(5, 6, "get", "x", "1"),
         Op(7, 8, "get", "y", "2")]
    assert check(h)[0]


def test_many_unknown_puts_stay_cheap_to_check() -> None:
    # A paused leader leaves puts unanswered; unread ones must not make the search branch.
    h = [Op(2 * i + 1, None, "put", "k", f"u{i}") for i in range(60)]
    h += [Op(200, 201, "put", "k", "a"), Op(202, 203, "get", "k", "a")]
    assert check(h)[0]


def test_a_read_unknown_put_happened_before_the_read_returned() -> None:
    # put(u) is unknown but read at [5, 6]: it happened by 6, so a read of "a" that
    # starts after put(a) and after 6 cannot see "u" again once "a" was read.
    h = [Op(1, None, "put", "k", "u"), Op(2, 3, "put", "k", "a"), Op(5, 6, "get", "k", "u"),
         Op(7, 8, "get", "k", "a")]
    assert not check(h)[0]
    # ...while the other order of the two puts is fine.
    ok = [Op(1, None, "put", "k", "u"), Op(2, 3, "put", "k", "a"), Op(5, 6, "get", "k", "a"),
          Op(7, 8, "get", "k", "u")]
    assert check(ok)[0]
