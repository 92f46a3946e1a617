"""A node imports only what its configuration uses: no mDNS (zeroconf), DNS (dnspython)
or certificate-issuing (cryptography) library unless it runs them, and never the
operator's dependencies. Checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

UNUSED_BY_DEFAULT = ("zeroconf", "dns", "cryptography", "kopf", "kubernetes", "aiobotocore",
                     "pydantic_settings", "prometheus_client", "yaml")


def test_a_default_node_imports_none_of_the_optional_libraries() -> None:
    code = ("import json, sys; import continuum.federation.distributed.cli, "
            "continuum.federation.distributed.node; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    loaded = set(json.loads(out))
    assert loaded.isdisjoint(UNUSED_BY_DEFAULT), sorted(loaded & set(UNUSED_BY_DEFAULT))
