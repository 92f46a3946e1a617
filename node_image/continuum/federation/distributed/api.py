"""The node's HTTP API over mutual TLS (the contract is in docs/api.md).

Handlers translate HTTP into calls on the node's services and nothing more.
Every refusal is one of the package's ``errors``, mapped to its status and JSON
body in one place (``_answer``): 400 invalid input, 404 not found, 409 a
conflict or a refused membership change, 421 not the leader (not carried out;
the body says where the leader is), 503 unavailable or overloaded (nothing
done; Retry-After), 504 outcome unknown (a write that may or may not take
effect). Anything else is a bug: 500 with no details, the traceback in the log.
Every route is timed for the latency histograms.
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

from . import concepts, coordinator, errors, http_util, membership
from .backup import source as backup_source

log = logging.getLogger(__name__)

CONCEPT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,255}$")
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


def mount(app: web.Application, services: Services) -> None:
    routes = _Routes(services)
    add = app.router
    add.add_get("/v1/status", routes.timed("status", routes.status))
    add.add_get("/v1/nodes", routes.timed("nodes", routes.nodes))
    add.add_get("/v1/route", routes.timed("route", routes.route))
    add.add_post("/v1/members", routes.timed("add_member", routes.add_member))
    add.add_delete("/v1/members/{id}", routes.timed("remove_member", routes.remove_member))
    add.add_post("/v1/leader/transfer", routes.timed("transfer", routes.transfer))
    add.add_post("/v1/cluster/force-new-cluster",
                 routes.timed("force_new_cluster", routes.force_new_cluster))
    # Admin: streams a backup archive of this node (backup/source.py).
    add.add_post("/v1/backup", routes.timed("backup", routes.backup))
    add.add_get("/v1/concepts", routes.timed("list", routes.list_concepts))
    add.add_put("/v1/concepts/{id}", routes.timed("put", routes.put_concept))
    add.add_get("/v1/concepts/{id}", routes.timed("get", routes.get_concept))
    add.add_delete("/v1/concepts/{id}", routes.timed("delete", routes.delete_concept))


def _answer(exc: errors.FederationError) -> web.Response:
    response = http_util.error(exc.http_status, exc.code, str(exc), **exc.details())
    response.headers.update(exc.headers())
    return response


class _Routes:
    def __init__(self, services: Services) -> None:
        self.s = services

    def timed(self, name: str, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            start = time.perf_counter()
            status = 500
            try:
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
        body = await http_util.read_json(request)
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
        await self.s.membership.add_member(body["id"], body["address"], timeout=float(timeout))
        return http_util.json_response({"id": body["id"], "voter": True})

    async def remove_member(self, request: web.Request) -> web.Response:
        member = request.match_info["id"]
        await self.s.membership.remove_member(member)
        return http_util.json_response({"id": member, "removed": True})

    async def transfer(self, request: web.Request) -> web.Response:
        body = await http_util.read_json(request) if request.can_read_body else {}
        target = body.get("to") if isinstance(body, dict) else None
        if target is not None and not isinstance(target, str):
            raise errors.InvalidInput("'to' must be a node id or null")
        leader = await self.s.membership.transfer_leadership(target)
        return http_util.json_response({"leader_id": leader})

    async def force_new_cluster(self, request: web.Request) -> web.Response:
        """Disaster recovery: quorum is lost for good; this node becomes the sole voter."""
        body = await http_util.read_json(request) if request.can_read_body else None
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
        value = await http_util.read_json(request)
        if value is None:  # a stored null would read back as "no such concept"
            raise errors.InvalidInput("a concept cannot be null: DELETE removes a concept")
        if _strong(request):
            key = request.headers.get("Idempotency-Key", "")  # none: the service makes one
            result = await self.s.concepts.put_strong(concept_id, value, key)
        else:
            result = await self.s.concepts.put_eventual(concept_id, value)
        return http_util.json_response(result)

    async def get_concept(self, request: web.Request) -> web.Response:
        concept_id = _concept_id(request)
        found = await self.s.concepts.get(concept_id, strong=_strong(request))
        if found is None:
            raise errors.NotFound(f"no concept {concept_id!r}")
        return http_util.json_response(found)

    async def delete_concept(self, request: web.Request) -> web.Response:
        concept_id = _concept_id(request)
        if _strong(request):
            key = request.headers.get("Idempotency-Key", "")  # none: the service makes one
            existed = await self.s.concepts.delete_strong(concept_id, key)
        else:
            existed = await self.s.concepts.delete_eventual(concept_id)
        if not existed:
            raise errors.NotFound(f"no concept {concept_id!r}")
        return http_util.json_response({"id": concept_id, "deleted": True})

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


def _concept_id(request: web.Request) -> str:
    concept_id = request.match_info["id"]
    if not CONCEPT_ID.match(concept_id):
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
