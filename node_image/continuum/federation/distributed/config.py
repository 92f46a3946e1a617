"""Node settings: one pydantic model read from flags, the environment and a YAML file.

Precedence, highest first: explicit arguments (CLI flags), ``CONTINUUM_*``
environment variables (nested with ``__``, e.g. ``CONTINUUM_RAFT__HEARTBEAT_INTERVAL_MS``),
the YAML file named by ``CONTINUUM_CONFIG_FILE`` (the operator mounts one from a
ConfigMap), then the defaults below. Invalid settings fail at start with a
message that names the field.

The environment is read here, in a few lines, rather than by pydantic-settings,
whose import alone (its AWS, Azure and GCP sources among it) costs a node's memory
more than the rest of its configuration: names are matched without regard to case,
values of mappings, lists and tuples are JSON (``bootstrap`` and ``dns_nameservers``
are comma lists), and variables that name no setting are left alone.
"""

from __future__ import annotations

import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .core import formation
from .core.raft import config as raft_config
from .transport import peer

# Value names the operator's FederationCluster spec uses as they are (one list, here).
BalanceAlgorithm = Literal["least_loaded", "latency", "round_robin", "random"]
ConflictStrategy = Literal["last_write_wins", "highest_node_wins", "merge_union"]


class RaftSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # etcd's defaults: rare false elections under load. A leader that dies is replaced
    # sooner than the timeout says: its followers see its connections drop and campaign
    # at once (pre-vote keeps a live leader safe), as they do on a fresh start.
    election_timeout_ms: tuple[int, int] = (1000, 2000)  # randomized in [lo, hi)
    heartbeat_interval_ms: int = Field(100, gt=0)
    # Append messages in flight per follower. One batches by round trip (fewest frames
    # and fsyncs per write on a LAN); more pipelines over links with long round trips.
    max_inflight_appends: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> RaftSettings:
        problem = raft_config.timing_error(self.election_timeout_ms, self.heartbeat_interval_ms)
        if problem is not None:
            raise ValueError(problem)
        return self


class MeshSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fanout: int = Field(3, ge=1)
    gossip_interval_ms: int = Field(200, gt=0)
    sync_interval_seconds: float = Field(30.0, gt=0)
    message_buffer_size: int = Field(1000, ge=16)
    # memberlist's LAN profile (Serf, Consul): one probe a second. Raft's own heartbeats
    # and the streams' end tell a dead leader sooner; the mesh tells liveness to the rest.
    probe_interval_ms: int = Field(1000, gt=0)
    probe_timeout_ms: int = Field(500, gt=0)

    @model_validator(mode="after")
    def _check(self) -> MeshSettings:
        if self.probe_timeout_ms >= self.probe_interval_ms:
            raise ValueError("probe_timeout_ms must be shorter than probe_interval_ms")
        return self


class LoadBalanceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algorithm: BalanceAlgorithm = "least_loaded"
    health_check_interval: float = Field(5.0, gt=0)
    unhealthy_threshold: int = Field(3, ge=1)


class ReplicationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conflict_strategy: ConflictStrategy = "last_write_wins"
    # A tombstone every replica holds is collected after this long.
    tombstone_grace_seconds: float = Field(60.0, ge=0)
    # Wall clocks within this of each other keep last-write-wins in real-time order; a
    # node that cannot vouch for its clock refuses multi-master writes (core/clocks.py).
    max_clock_offset_ms: int = Field(500, ge=1, le=3_600_000)


ENV_PREFIX = "CONTINUUM_"
CONFIG_FILE_VARIABLE = "CONTINUUM_CONFIG_FILE"
_COMMA_LISTS = ("bootstrap", "dns_nameservers")


class NodeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def __init__(self, **values: Any) -> None:
        super().__init__(**_merged(_settings_file(), _environment(type(self)), values))

    node_id: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    cluster_name: str = "continuum"
    bind_address: str = "0.0.0.0:7000"  # mutual TLS: peers and the API
    advertise_address: str | None = None  # what peers dial; default: bind_address
    # Plain HTTP (/healthz /readyz /metrics): loopback unless told otherwise (the operator
    # gives the pod's IP); /metrics says too much about the cluster for every interface.
    health_address: str = "127.0.0.1:8080"
    data_dir: Path = Path("/var/lib/continuum")
    tls_dir: Path = Path("/etc/continuum/tls")
    peer_domain: str | None = None  # node ids are also found as <id>.<peer_domain>
    # Opt-in: one shared certificate for *.<peer_domain> speaks for every node. Every pod
    # then holds the same key (any one of them can claim any member's id) and a removed
    # member's certificate cannot be revoked alone; per-node certificates are the default.
    wildcard_certificates: bool = False
    # Headers of a request (and of the next one on a kept-alive connection) and its body
    # must each arrive within this many seconds: slow clients do not hold connections.
    http_read_timeout_seconds: float = Field(20.0, gt=0)
    # /healthz fails once a member has known no leader for this long (0: never).
    liveness_leaderless_seconds: float = Field(300.0, ge=0)
    initial_members: dict[str, str] = Field(default_factory=dict)  # id -> host:port, static
    discovery_srv: str | None = None  # DNS SRV name of the headless Service
    dns_nameservers: list[str] = Field(default_factory=list)  # host:port, comma list
    bootstrap: list[str] = Field(default_factory=list)  # host:port, comma list
    mdns: bool = False
    formation_stable_seconds: float = Field(3.0, ge=0)
    # Like Consul's bootstrap_expect: how many nodes start together to form a new cluster.
    # Outside StatefulSet ordinals the founder is the lowest id it has verified, so it
    # waits until it has verified this many nodes (itself included); a node that finds a
    # formed cluster joins it whatever the number. Required with discovery hints (see
    # _check_formation); 1 founds alone, which is safe only when nodes start one at a time.
    bootstrap_expect: int | None = Field(None, ge=1)
    config_file: Path | None = None
    fsync: bool = True
    # uvloop: its TLS and socket paths are compiled, which a node serving mutual TLS feels
    # on every request (docs/performance.md); "asyncio" is the standard library's loop.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # The API port serves plain concept requests itself, without aiohttp's per-request
    # cost (api_connection.py); false: aiohttp serves every request (to compare, or to
    # rule the fast path out).
    api_fast_path: bool = True
    raft: RaftSettings = Field(default_factory=RaftSettings)
    mesh: MeshSettings = Field(default_factory=MeshSettings)
    load_balance: LoadBalanceSettings = Field(default_factory=LoadBalanceSettings)
    replication: ReplicationSettings = Field(default_factory=ReplicationSettings)

    @field_validator("bind_address", "health_address", "advertise_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            peer.split_address(value)
        return value

    @field_validator("bootstrap", "dns_nameservers", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _check_formation(self) -> NodeSettings:
        hinted = bool(self.bootstrap or self.mdns or self.discovery_srv)
        if (hinted and not self.initial_members and self.formation_mode == formation.LOWEST_ID
                and self.bootstrap_expect is None):
            raise ValueError(
                "bootstrap_expect is required with bootstrap, mdns or discovery_srv outside "
                "StatefulSet ordinal names: fresh nodes that start together and hear of each "
                "other at different times could each found a cluster. Set it to the number "
                "of nodes started together (a node that finds a formed cluster joins it "
                "anyway); 1 founds a cluster alone, safe only when nodes start one at a time")
        return self

    @property
    def formation_mode(self) -> str:
        """``ordinal`` for StatefulSet pods (``<name>-<n>`` found through SRV): ``<name>-0``
        founds the cluster; otherwise ``lowest_id``."""
        ordinal = formation.ordinal(self.node_id) is not None
        return formation.ORDINAL if ordinal and self.discovery_srv else formation.LOWEST_ID

    @property
    def peer_address(self) -> str:
        return self.advertise_address or self.bind_address



def _merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; mappings (the nested settings) are merged key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _merged(out[key], value)
            else:
                out[key] = value
    return out


def _environment(model: type[BaseModel]) -> dict[str, Any]:
    """``CONTINUUM_<FIELD>`` and ``CONTINUUM_<FIELD>__<SUBFIELD>`` variables as values."""
    fields = model.model_fields
    out: dict[str, Any] = {}
    for name, raw in os.environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        top, _, sub = name[len(ENV_PREFIX):].lower().partition("__")
        field = fields.get(top)
        if field is None:
            continue  # not a setting (CONTINUUM_LOG_LEVEL and the like)
        if not sub:
            value = raw if top in _COMMA_LISTS else _decoded(name, raw, field.annotation)
            if isinstance(value, dict) and isinstance(out.get(top), dict):
                value = _merged(value, out[top])  # CONTINUUM_RAFT__X beats CONTINUUM_RAFT
            out[top] = value
            continue
        nested = field.annotation
        if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
            continue
        sub_field = nested.model_fields.get(sub)
        value = raw if sub_field is None else _decoded(name, raw, sub_field.annotation)
        holder = out.setdefault(top, {})
        if isinstance(holder, dict):
            holder[sub] = value  # an unknown sub-setting is refused by the model, named
    return out


def _decoded(name: str, raw: str, annotation: Any) -> Any:
    """A variable's value: JSON for mappings, lists, tuples and nested settings."""
    if not _structured(annotation):
        return raw
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be JSON ({exc}): {raw!r}") from None


def _structured(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_structured(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin in (dict, list, tuple, set, frozenset):
        return True
    return isinstance(annotation, type) and issubclass(annotation, BaseModel | dict | list | tuple)


def _settings_file() -> dict[str, Any]:
    """The file named by ``CONTINUUM_CONFIG_FILE`` (absent: nothing)."""
    path = os.environ.get(CONFIG_FILE_VARIABLE)
    if not path:
        return {}
    import yaml  # only a node given a settings file reads YAML

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read config file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping")
    return data
