"""The plain-HTTP side port: liveness, readiness and Prometheus metrics. No data here."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from . import metrics


def app(node_id: str, is_ready: Callable[[], bool], formation: Callable[[], str],
        render_metrics: Callable[[], bytes]) -> web.Application:
    application = web.Application()

    async def healthz(request: web.Request) -> web.Response:
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
