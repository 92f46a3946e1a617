"""The plain-HTTP side port: liveness, readiness and Prometheus metrics. No data here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .node import FederationNode


def app(node: FederationNode) -> web.Application:
    application = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node_id": node.node_id})

    async def readyz(request: web.Request) -> web.Response:
        ready = node.is_ready()
        return web.json_response({"ready": ready, "formation": node.formation_state},
                                 status=200 if ready else 503)

    async def prometheus(request: web.Request) -> web.Response:
        body = node.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    application.router.add_get("/metrics", prometheus)
    return application
