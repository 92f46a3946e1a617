"""A StatefulSet's pod as the kubelet would run it: a container of the node image with the
pod template's environment (downward API and ``$(VAR)`` expanded), its volumes (Secret and
ConfigMap files, the PVC, emptyDirs, owned by the pod's fsGroup), its user, its hostname and
the cluster DNS in its /etc/resolv.conf.

One thing differs, because every pod here shares the host's network: an address the
template binds on every interface (``0.0.0.0:<containerPort>``) is bound on the pod's own
loopback IP instead, which is the pod IP the Service records and the operator dial.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image.containers import Container, Mount, cluster_dns, owned_dir, pod_volume

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_ANY_ADDRESS = re.compile(r"^0\.0\.0\.0:(\d+)$")


def node_container_spec(template: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = next(c for c in template["spec"]["containers"] if c["name"] == "node")
    return spec


def pod_env(template: Mapping[str, Any], pod: str, namespace: str) -> dict[str, str]:
    """The node container's environment as the kubelet builds it for ``pod``: downward-API
    fields filled in, ``$(VAR)`` expanded from variables defined earlier, ``$$`` kept as ``$``,
    references to unknown variables left as written."""
    container = node_container_spec(template)
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            def expand(m: re.Match[str]) -> str:
                return "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))
            env[var["name"]] = _VAR_REF.sub(expand, var["value"])
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def container_ports(template: Mapping[str, Any]) -> dict[str, int]:
    """Port name -> containerPort of the node container."""
    return {p["name"]: int(p["containerPort"]) for p in node_container_spec(template)["ports"]}


@dataclass
class PodSources:
    """What the API server holds for a pod's volumes: Secrets' and ConfigMaps' data."""

    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)


def pod_container(image: str, template: Mapping[str, Any], pod: str, namespace: str, *,
                  ip: str, sources: PodSources, root: Path, dns_server: str,
                  claims: Path) -> Container:
    """The container the kubelet would start for ``pod`` of a StatefulSet with ``template``.

    ``root``: this pod's folder (its log and Secret/ConfigMap/emptyDir volumes, made anew);
    ``claims``: where PersistentVolumeClaims live (``<claim>-<pod>``, kept across restarts);
    ``dns_server``: the cluster DNS's IP (port 53), named in the pod's resolv.conf."""
    spec = template["spec"]
    container = node_container_spec(template)
    security = spec.get("securityContext") or {}
    uid = int(security.get("runAsUser", 0))
    gid = int(security.get("runAsGroup", uid))
    fs_group = int(security.get("fsGroup", gid))
    env = pod_env(template, pod, namespace)
    ports = set(container_ports(template).values())
    for key, value in env.items():
        m = _ANY_ADDRESS.match(value)
        if m and int(m.group(1)) in ports:
            env[key] = f"{ip}:{m.group(1)}"
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    shutil.rmtree(root / "volumes", ignore_errors=True)
    mounts = []
    for vm in container.get("volumeMounts") or []:
        name = vm["name"]
        volume = volumes.get(name)
        where = root / "volumes" / name
        if volume is None:  # a volumeClaimTemplate: the pod's PVC
            source = owned_dir(claims / f"{name}-{pod}", uid, fs_group)
        elif "secret" in volume:
            data = sources.secrets[volume["secret"]["secretName"]]
            pod_volume(where, data, mode=int(volume["secret"].get("defaultMode", 0o644)),
                       gid=fs_group)
            source = where
        elif "configMap" in volume:
            text = sources.config_maps[volume["configMap"]["name"]]
            pod_volume(where, {k: v.encode() for k, v in text.items()},
                       mode=int(volume["configMap"].get("defaultMode", 0o644)), gid=fs_group)
            source = where
        elif "emptyDir" in volume:
            source = owned_dir(where, uid, fs_group)
        else:
            raise ValueError(f"volume {name}: kind not run here: {sorted(volume)}")
        mounts.append(Mount(source, vm["mountPath"], bool(vm.get("readOnly"))))
    return Container(image, pod, env=env, mounts=mounts, user=f"{uid}:{gid}", hostname=pod,
                     dns=cluster_dns(dns_server, namespace), log=root / "container.log")
