"""Login: credentials come from the ``kubernetes`` library's configuration loading, so a
kubeconfig whose user is an exec credential plugin (EKS, GKE, OIDC helpers) works."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# The operator's login handler in a fresh process, as the operator starts with KUBECONFIG set
# (the library reads the variable when it is imported).
LOGIN = """
import json, logging, kopf
from continuum_operator import handlers
from continuum_operator.settings import OperatorSettings
memo = kopf.Memo()
memo["settings"] = OperatorSettings(metrics_port=0)
info = handlers.login(memo=memo, logger=logging.getLogger("test"),
                      settings=kopf.OperatorSettings())
print(json.dumps({"server": info.server, "token": info.token, "scheme": info.scheme}))
"""


def test_a_kubeconfig_exec_plugin_provides_the_token(tmp_path: Path) -> None:
    plugin = tmp_path / "token-helper"
    plugin.write_text(f"#!{sys.executable}\n"
                      "import json\n"
                      "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1',\n"
                      "  'kind': 'ExecCredential', 'status': {'token': 'from-the-plugin'}}))\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.9.1:6443",
                                                "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
            "interactiveMode": "Never"}}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KUBERNETES_", "CONTINUUM_OPERATOR_"))}
    env |= {"KUBECONFIG": str(path), "HOME": str(tmp_path),
            "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("node_image", "operator"))}
    out = subprocess.run([sys.executable, "-c", LOGIN], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["server"].rstrip("/") == "https://127.0.9.1:6443"
    assert (info["scheme"], info["token"]) == ("Bearer", "from-the-plugin")
