"""The real operator (kopf + our handlers) against kmock's Kubernetes emulator.

Pods are made by a mock StatefulSet controller; their node API is a fake over real mutual
TLS on 127.0.5.x that keeps a Raft-like membership and logs every membership call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from harness import (NS, Api, Emulator, FakeFederation, MockStatefulSetController, declare_resources,
                     free_port, run_operator, operator_settings, wait_until)

pytestmark = [pytest.mark.timeout(180), pytest.mark.kmock(cls=Emulator)]

OWNED = [
    "/api/v1/namespaces/prod/configmaps/demo-config",
    "/api/v1/namespaces/prod/services/demo-peers",
    "/api/v1/namespaces/prod/services/demo",
    "/apis/apps/v1/namespaces/prod/statefulsets/demo",
    "/api/v1/namespaces/prod/secrets/demo-tls",
    "/api/v1/namespaces/prod/secrets/demo-ca",
    "/api/v1/namespaces/prod/secrets/demo-operator-client-tls",
]


class Env:
    def __init__(self, kmock: Any, tmp_path: Path) -> None:
        self.kmock = kmock
        self.api = Api(str(kmock.url))
        self.fed = FakeFederation("demo", free_port(), tmp_path / "nodes")
        self.controller = MockStatefulSetController(self.api, self.fed)
        self.settings = operator_settings(str(kmock.url), self.fed.port)

    async def members(self) -> list[str]:
        st = await self.api.cr_status("demo")
        return [m["name"] for m in st.get("members") or []]

    async def converged(self, n: int) -> bool:
        st = await self.api.cr_status("demo")
        voters = [m for m in st.get("members") or [] if m.get("voter")]
        return (st.get("phase") == "Running" and len(voters) == n
                and st.get("readyReplicas") == n and not st.get("operation"))


@pytest.fixture()
async def env(kmock: Any, tmp_path: Path) -> AsyncIterator[Env]:
    declare_resources(kmock)
    e = Env(kmock, tmp_path)
    e.controller.start()
    try:
        yield e
    finally:
        await e.controller.stop()
        await e.fed.stop()
        await e.api.close()


async def test_created_cluster_gets_owned_objects_and_converges(env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 3})
        for path in OWNED:
            await wait_until(lambda p=path: env.api.get(p), 20, path)
        sts = await env.api.get(OWNED[3])
        assert sts is not None and sts["metadata"]["ownerReferences"][0]["uid"] == "uid-demo"
        await wait_until(lambda: env.converged(3), 60, "3 ready voters")
        st = await env.api.cr_status("demo")
        assert st["leader"] == "demo-0" and st["selector"]
        assert env.fed.log == [("bootstrap", "demo-0"), ("add_learner", "demo-1"),
                               ("promote", "demo-1"), ("add_learner", "demo-2"),
                               ("promote", "demo-2")]
        reasons = {e["reason"] for e in await env.api.events()}
        assert {"Created", "CertificateIssued", "GrowStatefulSet", "AddMember"} <= reasons
