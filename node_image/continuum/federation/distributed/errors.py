"""The errors a node's callers can act on: one hierarchy, each with its HTTP status.

Every refusal the library raises to a caller is one of these. Each carries
``http_status`` and ``code`` (the API answers ``{"error": code, "message": ...,
**details}`` with that status, mapped in exactly one place), the way h11's
protocol errors carry ``error_status_hint``. What each promises:

* ``InvalidInput`` (400): the request is malformed; nothing changed.
* ``Forbidden`` (403): the client certificate's role does not allow the call
  (``role_needed`` says which would); nothing changed.
* ``NotFound`` (404): no such object; nothing changed.
* ``RequestTimeout`` (408): the request's body did not arrive in time; nothing changed.
* ``TooLarge`` (413): the request's body is over the limit; nothing changed.
* ``WrongConsistency`` (409): the concept lives in the other consistency domain.
* ``Conflict`` (409, its own ``code``): the request conflicts with the node's
  state now (e.g. a backup of a node that is not caught up); nothing changed.
* ``MembershipError`` (409, its own ``code``): a membership change that cannot be
  made now (``busy``, ``exists``, ``not_caught_up``, ...); nothing changed that a
  retry would not resume.
* ``NotLeader`` (421): this node does not lead, or stopped leading before the
  request took effect: the request was NOT carried out; send it to
  ``leader_address``.
* ``Unavailable`` (503): the cluster could not take the request now (no quorum in
  time for a read, shutting down); nothing changed. ``Overloaded`` is one kind.
* ``OutcomeUnknown`` (504): a write was proposed but its fate is not known (the
  node lost its leader or the deadline passed before the entry was decided).
  It may or may not take effect; retry only with the same idempotency key.

This module imports nothing of the package, so every layer (the pure cores
included) may raise these.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FederationError(Exception):
    """Base of every error a caller of the node or its API can act on."""

    http_status: ClassVar[int] = 500
    code: str = "internal"

    def __init__(self, *args: object, code: str | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            self.code = code

    def details(self) -> dict[str, Any]:
        """Extra fields of the JSON error body."""
        return {}

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers of the answer."""
        return {}


class InvalidInput(FederationError, ValueError):
    http_status = 400
    code = "invalid"


class NotSerializable(InvalidInput, TypeError):
    """A value that cannot be encoded for the log or the wire."""


class Forbidden(FederationError, PermissionError):
    """The caller's certificate does not hold the role the call needs."""

    http_status = 403
    code = "forbidden"

    def __init__(self, message: str, *, role_needed: str | None = None,
                 role_held: str | None = None) -> None:
        super().__init__(message)
        self.role_needed = role_needed
        self.role_held = role_held

    def details(self) -> dict[str, Any]:
        return {"role_needed": self.role_needed, "role_held": self.role_held}


class RequestTimeout(FederationError, TimeoutError):
    http_status = 408
    code = "timeout"


class TooLarge(FederationError, ValueError):
    http_status = 413
    code = "too_large"


class NotFound(FederationError, LookupError):
    http_status = 404
    code = "not_found"


class WrongConsistency(FederationError):
    """The concept id lives in the other consistency domain."""

    http_status = 409
    code = "wrong_consistency"

    def __init__(self, concept_id: str, lives_in: str) -> None:
        if lives_in == "strong":
            message = (f"concept {concept_id!r} lives in the strong store (written with "
                       "?consistency=strong): write and delete it with ?consistency=strong")
        else:
            message = (f"concept {concept_id!r} lives in the multi-master store (written "
                       "without ?consistency=strong): use the default consistency for it")
        super().__init__(message)
        self.concept_id = concept_id
        self.lives_in = lives_in

    def details(self) -> dict[str, Any]:
        return {"consistency": self.lives_in}


class Conflict(FederationError):
    """The request conflicts with this node's state now (``code`` says how); nothing
    changed."""

    http_status = 409
    code = "conflict"


class MembershipError(FederationError, ValueError):
    """A membership change that cannot be made; ``code`` says why: ``exists``,
    ``not_member``, ``not_a_member``, ``busy``, ``not_learner``, ``last_voter``,
    ``no_target``, ``transfer_failed``, ``not_caught_up``, ``removed``, ``has_leader``,
    ``refused``, ``no_raft_state``."""

    http_status = 409

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message, code=code)
        self._details = details

    def details(self) -> dict[str, Any]:
        return dict(self._details)


class NotLeader(FederationError):
    """The request was not carried out: this node does not lead (or no longer does)."""

    http_status = 421
    code = "not_leader"

    def __init__(self, leader_id: str | None, leader_address: str | None = None) -> None:
        where = f"{leader_id} at {leader_address}" if leader_address else str(leader_id)
        super().__init__(f"this node is not the leader (leader: {where})")
        self.leader_id = leader_id
        self.leader_address = leader_address

    def details(self) -> dict[str, Any]:
        return {"leader_id": self.leader_id, "leader_address": self.leader_address}


class Unavailable(FederationError):
    """Nothing was done; the cluster could not take the request now. Retry later."""

    http_status = 503
    code = "unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class Overloaded(Unavailable):
    """Too much queued work to accept more; nothing was proposed."""

    code = "overloaded"


class OutcomeUnknown(FederationError, TimeoutError):
    """A proposed write whose fate is not known: it may or may not take effect."""

    http_status = 504
    code = "outcome_unknown"

    def __init__(self, message: str = "the outcome of this write is unknown: it may or may "
                 "not take effect; retry it with the same Idempotency-Key") -> None:
        super().__init__(message)


_BY_CODE: dict[str, type[FederationError]] = {
    cls.code: cls for cls in (InvalidInput, NotFound, Unavailable, Overloaded, OutcomeUnknown)
}


def from_answer(status: int, body: dict[str, Any]) -> FederationError | None:
    """The error an API answer (its status and JSON body) stands for, or None for an
    answer that is not one of these (clients keep their own error for those)."""
    code = body.get("error")
    message = str(body.get("message", ""))
    if status == NotLeader.http_status:
        leader, address = body.get("leader_id"), body.get("leader_address")
        return NotLeader(leader if isinstance(leader, str) else None,
                         address if isinstance(address, str) else None)
    if not isinstance(code, str):
        return None
    if status == WrongConsistency.http_status and code == WrongConsistency.code:
        lives_in = body.get("consistency")
        wrong = WrongConsistency("", lives_in if isinstance(lives_in, str) else "")
        wrong.args = (message,)
        return wrong
    if status == MembershipError.http_status:
        return MembershipError(code, message)
    cls = _BY_CODE.get(code)
    if cls is None or cls.http_status != status:
        return None
    return cls(message) if message else cls()
