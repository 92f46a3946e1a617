"""The node's HTTP API over mutual TLS (the contract is in docs/api.md).

Handlers translate HTTP into calls on the node's services and nothing more.
Every route needs a role, carried by the client certificate as a URI SAN
(``transport.tls``): ``read`` (status, routing, reads), ``write`` (also concept
writes and deletes), ``admin`` (also member changes, leadership transfer,
force-new-cluster, backups, revocations); a revoked certificate holds none.
Every refusal is one of the package's ``errors``, mapped to its status and JSON
body in one place (``error_parts``): 400 invalid input, 403 the role does not allow
the call (the body names the role needed), 404 not found, 408 a body that did
not arrive in time, 409 a conflict or a refused membership change, 413 a body
over the limit, 421 not the leader (not carried out; the body says where the
leader is), 503 unavailable or overloaded (nothing done; Retry-After), 504
outcome unknown (a write that may or may not take effect). Anything else is a
bug: 500 with no details, the traceback in the log. Every route is timed for
the latency histograms.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from multidict import MultiMapping

from . import concepts, coordinator, errors, http_util, membership, statemachine
from .backup import source as backup_source
from .transport import peer, tls

log = logging.getLogger(__name__)

# \Z, not $: "$" also matches before a final newline ("nl-test\n" would pass).
CONCEPT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,255}\Z")
READ, WRITE, ADMIN = tls.API_ROLES
MAX_PAGE = 1000
ADD_MEMBER_TIMEOUT = 60.0  # seconds a new member has to catch up before it is promoted
MAX_ADD_MEMBER_TIMEOUT = 600.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestMetrics(Protocol):
    def observe_request(self, route: str, status: int, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Services:
    """What the API serves, each handed in by the node."""

    node_id: str
    concepts: concepts.ConceptService
    membership: membership.Membership
    coordinator: coordinator.FederationCoordinator
    backup: backup_source.BackupSource
    status: Callable[[], dict[str, Any]]
    metrics: RequestMetrics
    is_revoked: Callable[[tls.Identity], bool]
    read_timeout: float = http_util.READ_TIMEOUT_SECONDS  # a request body's deadline
    # Whose certificate made the request (a seam: tests without TLS hand in their own).
    identity_of: Callable[[web.BaseRequest], tls.Identity | None] = peer.request_identity


def mount(app: web.Application, services: Services) -> None:
    routes = _Routes(services)
    add = app.router
    add.add_get("/v1/status", routes.timed("status", routes.status, READ))
    add.add_get("/v1/nodes", routes.timed("nodes", routes.nodes, READ))
    add.add_get("/v1/route", routes.timed("route", routes.route, READ))
    add.add_post("/v1/members", routes.timed("add_member", routes.add_member, ADMIN))
    add.add_delete("/v1/members/{id}", routes.timed("remove_member", routes.remove_member,
                                                    ADMIN))
    add.add_post("/v1/leader/transfer", routes.timed("transfer", routes.transfer, ADMIN))
    add.add_post("/v1/cluster/force-new-cluster",
                 routes.timed("force_new_cluster", routes.force_new_cluster, ADMIN))
    # Admin: streams a backup archive of this node (backup/source.py).
    add.add_post("/v1/backup", routes.timed("backup", routes.backup, ADMIN))
    add.add_get("/v1/revocations", routes.timed("revocations", routes.revocations, READ))
    add.add_post("/v1/revocations", routes.timed("revoke", routes.revoke, ADMIN))
    add.add_get("/v1/concepts", routes.timed("list", routes.list_concepts, READ))
    add.add_put("/v1/concepts/{id}", routes.timed("put", routes.put_concept, WRITE))
    add.add_get("/v1/concepts/{id}", routes.timed("get", routes.get_concept, READ))
    add.add_delete("/v1/concepts/{id}", routes.timed("delete", routes.delete_concept, WRITE))


def authorize(services: Services, identity: tls.Identity | None, role: str) -> None:
    """``errors.Forbidden`` unless ``identity`` (the client certificate's) holds ``role``
    (or more) and is not revoked."""
    revoked = identity is not None and services.is_revoked(identity)
    held = identity.api_role if identity is not None and not revoked else None
    if held is not None and tls.API_ROLES.index(held) >= tls.API_ROLES.index(role):
        return
    if revoked:
        why = "this certificate is revoked"
    elif held is not None:
        why = f"the client certificate holds the {held} role"
    else:
        why = "the client certificate holds no API role"
    raise errors.Forbidden(
        f"this call needs the {role} role ({tls.role_uri(role)} as a URI SAN) and {why}; "
        f"`continuum-federation certs client --role {role}` makes such a certificate",
        role_needed=role, role_held=held)


def error_parts(exc: errors.FederationError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The answer to ``exc``: its status, JSON body and extra headers."""
    return (exc.http_status, {"error": exc.code, "message": str(exc), **exc.details()},
            exc.headers())


def _answer(exc: errors.FederationError) -> web.Response:
    status, body, headers = error_parts(exc)
    response = http_util.json_response(body, status)
    response.headers.update(headers)
    return response


class ConceptCalls:
    """The concept routes' work once HTTP is parsed: shared by the aiohttp routes below and
    the API port's own serving of their plain form (``api_connection``). Each returns the
    answer's JSON body or raises one of the package's ``errors``."""

    def __init__(self, service: concepts.ConceptService) -> None:
        self._service = service

    async def put(self, concept_id: str, value: Any, strong: bool,
                  idempotency_key: str) -> dict[str, Any]:
        if value is None:  # a stored null would read back as "no such concept"
            raise errors.InvalidInput("a concept cannot be null: DELETE removes a concept")
        if strong:  # no key: the service makes one
            return await self._service.put_strong(concept_id, value, idempotency_key)
        return await self._service.put_eventual(concept_id, value)

    async def get(self, concept_id: str, strong: bool) -> dict[str, Any]:
        found = await self._service.get(concept_id, strong=strong)
        if found is None:
            raise errors.NotFound(f"no concept {concept_id!r}")
        return found

    async def delete(self, concept_id: str, strong: bool,
                     idempotency_key: str) -> dict[str, Any]:
        if strong:
            existed = await self._service.delete_strong(concept_id, idempotency_key)
        else:
            existed = await self._service.delete_eventual(concept_id)
        if not existed:
            raise errors.NotFound(f"no concept {concept_id!r}")
        return {"id": concept_id, "deleted": True}


class _Routes:
    def __init__(self, services: Services) -> None:
        self.s = services
        self.concepts = ConceptCalls(services.concepts)

    def timed(self, name: str, handler: Handler, role: str) -> Handler:
        """``handler`` behind the role check, with errors mapped and latency observed."""
        async def wrapped(request: web.Request) -> web.StreamResponse:
            start = time.perf_counter()
            status = 500
            try:
                self._authorize(request, role)
                response = await handler(request)
                status = response.status
                return response
            except errors.FederationError as exc:
                status = exc.http_status
                return _answer(exc)
            except web.HTTPException as exc:
                status = exc.status
                raise
            except Exception:  # a bug: the traceback goes to the log, the client gets JSON
                log.exception("%s %s failed", request.method, request.path)
                return http_util.error(500, "internal", "internal error (see the node's log)")
            finally:
                self.s.metrics.observe_request(name, status, time.perf_counter() - start)
        return wrapped

    async def _json(self, request: web.Request) -> Any:
        return await http_util.read_json(request, self.s.read_timeout)

    def _authorize(self, request: web.Request, role: str) -> None:
        authorize(self.s, self.s.identity_of(request), role)

    # -- cluster -----------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        return http_util.json_response(self.s.status())

    async def nodes(self, request: web.Request) -> web.Response:
        status = request.query.get("status")
        try:
            found = await self.s.coordinator.get_all_nodes(status_filter=status)
        except ValueError as exc:
            raise errors.InvalidInput(str(exc)) from None
        return http_util.json_response({"nodes": [_plain(n) for n in found],
                                  "stats": self.s.coordinator.get_stats()})

    async def route(self, request: web.Request) -> web.Response:
        try:
            criteria = route_criteria(request.query)
            chosen = await self.s.coordinator.select_node(criteria or None)
        except (ValueError, TypeError) as exc:
            raise errors.InvalidInput(str(exc)) from None
        if chosen is None:
            return http_util.error(503, "no_healthy_node", "no healthy node matches")
        return http_util.json_response(_plain(chosen))

    async def add_member(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) \
                or not isinstance(body.get("address"), str):
            raise errors.InvalidInput('body must be {"id": str, "address": str, '
                                      '"timeout": seconds (optional)}')
        # The caller's deadline, so it hears "not_caught_up" rather than timing out blind.
        timeout = body.get("timeout", ADD_MEMBER_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not 0 < timeout <= MAX_ADD_MEMBER_TIMEOUT:
            raise errors.InvalidInput("timeout must be a number of seconds in "
                                      f"(0, {MAX_ADD_MEMBER_TIMEOUT:g}]")
        member, address = check_member(body["id"], body["address"])
        await self.s.membership.add_member(member, address, timeout=float(timeout))
        return http_util.json_response({"id": member, "voter": True})

    async def remove_member(self, request: web.Request) -> web.Response:
        member = request.match_info["id"]
        revoked = await self.s.membership.remove_member(member)
        return http_util.json_response({"id": member, "removed": True,
                                  "revoked_certificates": revoked})

    async def revocations(self, request: web.Request) -> web.Response:
        return http_util.json_response({"revoked": self.s.membership.revocations()})

    async def revoke(self, request: web.Request) -> web.Response:
        """Admin: revoke a certificate (a leaked key, a client that left) cluster-wide."""
        body = await self._json(request)
        usage = ('body must be {"fingerprint": "<hex SHA-256 of the DER>"} or '
                 '{"certificate": "<PEM>"}, with "reason" optional')
        if not isinstance(body, dict) or not ("fingerprint" in body) ^ ("certificate" in body):
            raise errors.InvalidInput(usage)
        reason = body.get("reason", "revoked by an admin")
        if not isinstance(reason, str) or len(reason) > 200:
            raise errors.InvalidInput("reason must be a string of at most 200 characters")
        if "certificate" in body:
            if not isinstance(body["certificate"], str):
                raise errors.InvalidInput(usage)
            try:
                fingerprints = tls.pem_fingerprints(body["certificate"].encode())
            except tls.TLSConfigError as exc:
                raise errors.InvalidInput(str(exc)) from None
        elif isinstance(body["fingerprint"], str):
            fingerprints = [body["fingerprint"].lower().replace(":", "")]
        else:
            raise errors.InvalidInput(usage)
        if not all(statemachine.FINGERPRINT.match(f) for f in fingerprints):
            raise errors.InvalidInput(f"not a certificate fingerprint: {usage}")
        newly = await self.s.membership.revoke(fingerprints, None, reason)
        return http_util.json_response({"revoked": fingerprints, "newly_revoked": newly})

    async def transfer(self, request: web.Request) -> web.Response:
        body = await self._json(request) if request.can_read_body else {}
        target = body.get("to") if isinstance(body, dict) else None
        if target is not None and not isinstance(target, str):
            raise errors.InvalidInput("'to' must be a node id or null")
        leader = await self.s.membership.transfer_leadership(target)
        return http_util.json_response({"leader_id": leader})

    async def force_new_cluster(self, request: web.Request) -> web.Response:
        """Disaster recovery: quorum is lost for good; this node becomes the sole voter."""
        body = await self._json(request) if request.can_read_body else None
        me = self.s.node_id
        if not isinstance(body, dict) or not isinstance(body.get("confirm"), str):
            raise errors.InvalidInput(f'body must be {{"confirm": "{me}"}} (this node\'s id)')
        if body["confirm"] != me:
            raise errors.InvalidInput(f"confirm must be this node's id {me!r}, "
                                      f"not {body['confirm']!r}")
        return http_util.json_response(await self.s.membership.force_new_cluster())

    async def backup(self, request: web.Request) -> web.StreamResponse:
        """Admin: a consistent backup of this node, streamed (see backup/source.py)."""
        return await self.s.backup.respond(request)

    # -- concepts ----------------------------------------------------------------------------

    async def put_concept(self, request: web.Request) -> web.Response:
        concept_id = _concept_id(request)
        value = await self._json(request)
        key = request.headers.get("Idempotency-Key", "")
        return http_util.json_response(
            await self.concepts.put(concept_id, value, _strong(request), key))

    async def get_concept(self, request: web.Request) -> web.Response:
        return http_util.json_response(
            await self.concepts.get(_concept_id(request), _strong(request)))

    async def delete_concept(self, request: web.Request) -> web.Response:
        concept_id = _concept_id(request)
        key = request.headers.get("Idempotency-Key", "")
        return http_util.json_response(
            await self.concepts.delete(concept_id, _strong(request), key))

    async def list_concepts(self, request: web.Request) -> web.Response:
        after = request.query.get("after") or None
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise errors.InvalidInput("limit must be an integer") from None
        if not 1 <= limit <= MAX_PAGE:
            raise errors.InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
        ids = self.s.concepts.list(after, limit)
        next_after = ids[-1] if len(ids) == limit else None
        return http_util.json_response({"items": ids, "next": next_after})


_NUMBERS = ("max_load", "max_latency_ms")
_ID_LISTS = ("exclude", "include")


def route_criteria(query: Mapping[str, str] | MultiMapping[str]) -> dict[str, Any]:
    """``/v1/route`` query parameters as ``select_node`` criteria.

    Query values are strings: ``max_load`` and ``max_latency_ms`` are numbers;
    ``exclude`` and ``include`` are node ids, repeated or comma-separated;
    ``min_capacity.<key>=<number>``; ``metadata.<key>=<value>``, the value read as
    JSON when it is JSON (``true``, ``3``), else as the string. Other names are
    passed on for ``Criteria`` to refuse.
    """
    out: dict[str, Any] = {}
    for key, value in query.items():
        if key in _NUMBERS:
            out[key] = _query_number(key, value)
        elif key in _ID_LISTS:
            out.setdefault(key, []).extend(v for v in value.split(",") if v)
        elif key.startswith("min_capacity."):
            out.setdefault("min_capacity", {})[key.removeprefix("min_capacity.")] = \
                _query_number(key, value)
        elif key.startswith("metadata."):
            out.setdefault("metadata", {})[key.removeprefix("metadata.")] = _json_or_text(value)
        else:
            out[key] = value
    return out


def _query_number(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def check_member(node_id: Any, address: Any) -> tuple[str, str]:
    """A member's id and address as given, or ``errors.InvalidInput`` before anything
    changes: the id must be a DNS name (it is the member's certificate name), the
    address ``host:port`` with a port from 1 to 65535."""
    try:
        tls.check_node_name(node_id)
        host, port = peer.split_address(address)
    except ValueError as exc:
        raise errors.InvalidInput(f"member: {exc}") from None
    if not 1 <= port <= 65535 or not host or any(c.isspace() or c in "/@?#" for c in host):
        raise errors.InvalidInput(f"member address must be host:port with a port from 1 to "
                                  f"65535, got {address!r}")
    return node_id, address


def _concept_id(request: web.Request) -> str:
    concept_id = request.match_info["id"]
    if not CONCEPT_ID.match(concept_id):  # match + \Z: the whole id
        raise errors.InvalidInput("concept id must be 1-256 characters of letters, digits and ._:- "
                         "starting with a letter or digit")
    return concept_id


def _strong(request: web.Request) -> bool:
    # The two queries clients send, without parsing them into a multidict on every write.
    raw = request.query_string
    if not raw:
        return False
    if raw == "consistency=strong":
        return True
    consistency = request.query.get("consistency", "eventual")
    if consistency not in ("strong", "eventual"):
        raise errors.InvalidInput("consistency must be 'strong' or 'eventual'")
    return consistency == "strong"


def _plain(obj: Any) -> Any:
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return obj
