"""Operator settings (environment ``CONTINUUM_OPERATOR_*``; tests pass an instance in the memo)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONTINUUM_OPERATOR_", frozen=True)

    api_server: str | None = Field(
        default=None, description="Plain API URL (e.g. kubectl proxy); default: in-cluster "
                                  "service account, then kubeconfig.")
    interval: float = Field(default=10.0, gt=0, description="Seconds between status polls.")
    busy_interval: float = Field(default=1.0, gt=0,
                                 description="Seconds between steps while an operation runs.")
    node_port: int = Field(default=7000, ge=1, le=65535, description="The nodes' mTLS API port.")
    node_timeout: float = Field(default=5.0, gt=0, description="Timeout of a status call.")
    membership_timeout: float = Field(
        default=120.0, gt=0, description="Timeout of a member add/remove/transfer call.")
    catch_up_lag: int = Field(
        default=100, ge=0, description="Entries a member's match index may trail the leader's "
        "commit index and still count as caught up (restarts and removals wait for it).")
    peering_lifetime: int = Field(
        default=30, ge=2, le=600, description="Seconds a replica's peering record lives: a "
        "standby takes over at most this long after the active replica dies.")
    peering_priority: int | None = Field(
        default=None, description="This replica's peering priority; default: earlier "
        "started replicas rank higher, so a new replica never preempts a working one.")
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 disables metrics.")
    watch_server_timeout: int = Field(default=300, ge=10)
    watch_client_timeout: int = Field(default=330, ge=10)
    connect_timeout: int = Field(default=30, ge=1)
