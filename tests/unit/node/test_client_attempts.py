"""The API client sends each call once: aiohttp's silent second attempt of a GET, PUT or
DELETE on a broken connection would write a multi-master concept twice."""

from __future__ import annotations

import asyncio

import aiohttp

from continuum.federation.distributed import client


async def test_a_put_whose_connection_breaks_is_not_sent_again() -> None:
    received = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        received += 1
        writer.close()  # applied, then the connection broke before the answer

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with client.one_attempt(aiohttp.ClientSession()) as session:
            try:
                async with session.put(f"http://127.0.0.1:{port}/v1/concepts/c", data=b"1"):
                    pass
            except aiohttp.ClientError:
                pass
        assert received == 1
        # the same call through a plain session is sent twice: the switch is what holds
        received = 0
        async with aiohttp.ClientSession() as plain:
            try:
                async with plain.put(f"http://127.0.0.1:{port}/v1/concepts/c", data=b"1"):
                    pass
            except aiohttp.ClientError:
                pass
        assert received == 2
    finally:
        server.close()
        await server.wait_closed()
