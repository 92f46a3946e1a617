"""The plain-HTTP side port: liveness, readiness and Prometheus metrics. No data here.

* ``/healthz`` (liveness): 200 while the node makes progress; 503 with the reason
  once it cannot: its Raft loop stopped after an internal failure (a failed
  fsync), has not run for ``STALL_SECONDS`` (wedged on a disk or a callback), or
  it has been a member without a leader for longer than the node's
  ``liveness_leaderless_seconds`` (a restart is then the remedy a supervisor can
  try; 0 turns that rule off). A node that is merely starting or joining passes.
* ``/readyz`` (readiness): 200 for a member that follows a known leader.

The port binds loopback unless told otherwise (the operator gives the pod's IP),
since ``/metrics`` says a good deal about the cluster.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from . import metrics

STALL_SECONDS = 30.0


def app(node_id: str, is_ready: Callable[[], bool], formation: Callable[[], str],
        render_metrics: Callable[[], bytes],
        not_live: Callable[[], str | None] = lambda: None) -> web.Application:
    """``not_live()`` returns why the node fails its liveness check, or None."""
    application = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        why = not_live()
        if why is not None:
            return web.json_response({"status": "failing", "node_id": node_id, "reason": why},
                                     status=503)
        return web.json_response({"status": "ok", "node_id": node_id})

    async def readyz(request: web.Request) -> web.Response:
        ready = is_ready()
        return web.json_response({"ready": ready, "formation": formation()},
                                 status=200 if ready else 503)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=render_metrics(), headers={"Content-Type": metrics.CONTENT_TYPE})

    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    application.router.add_get("/metrics", prometheus)
    return application
