"""The node's HTTP API over mutual TLS (see docs/api.md for the contract)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .node import FederationNode


def mount(app: web.Application, node: FederationNode) -> None:
    async def status(request: web.Request) -> web.Response:
        return web.json_response(node.status())

    app.router.add_get("/v1/status", status)
