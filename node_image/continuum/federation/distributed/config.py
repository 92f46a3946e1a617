"""Node settings: one pydantic model read from flags, the environment and a YAML file.

Precedence, highest first: explicit arguments (CLI flags), ``CONTINUUM_*``
environment variables (nested with ``__``, e.g. ``CONTINUUM_RAFT__HEARTBEAT_INTERVAL_MS``),
the YAML file named by ``CONTINUUM_CONFIG_FILE`` (the operator mounts one from a
ConfigMap), then the defaults below. Invalid settings fail at start with a
message that names the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

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


class NodeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONTINUUM_", env_nested_delimiter="__",
                                      extra="forbid")

    node_id: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    cluster_name: str = "continuum"
    bind_address: str = "0.0.0.0:7000"  # mutual TLS: peers and the API
    advertise_address: str | None = None  # what peers dial; default: bind_address
    health_address: str = "0.0.0.0:8080"  # plain HTTP: /healthz /readyz /metrics
    data_dir: Path = Path("/var/lib/continuum")
    tls_dir: Path = Path("/etc/continuum/tls")
    peer_domain: str | None = None  # wildcard certificates: sender ids are <id>.<peer_domain>
    initial_members: dict[str, str] = Field(default_factory=dict)  # id -> host:port, static
    discovery_srv: str | None = None  # DNS SRV name of the headless Service
    dns_nameservers: Annotated[list[str], NoDecode] = Field(default_factory=list)  # host:port
    bootstrap: Annotated[list[str], NoDecode] = Field(default_factory=list)  # host:port, comma list
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the file named by ``CONTINUUM_CONFIG_FILE`` (absent: nothing)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("CONTINUUM_CONFIG_FILE")
        if not path:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read config file {path}: {exc}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping")
        return data
