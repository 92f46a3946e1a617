"""The only module with ``@kopf.on.*`` handlers. Thin: each delegates to ``reconciler.py``.

- startup: our own annotation prefix and finalizer, explicit watch timeouts, metrics, and the
  peering priority of this replica (``seniority``: the earliest started replica works, the
  others stand by, so a new or restarted replica never takes over from a working one);
- login: the API server from settings (e.g. kubectl proxy), else the in-cluster service
  account, else kubeconfig; the same credentials serve ``cluster.Kube``;
- create/update/resume: validate the spec (an invalid one is a permanent error with a clear
  message; the daemon also records it in the status) and wake the cluster's daemon;
- a daemon per FederationCluster: the single writer for that cluster, reconciling every
  ``interval`` seconds (``busy_interval`` while an operation runs) and at once when woken;
- a daemon per FederationBackup: starts its Job and follows it into the status, then ends;
- delete: remove owned objects (ownerReferences would too, but not on every cluster in time)
  and PVCs when ``storage.retention.whenDeleted`` is Delete.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from typing import Any, cast

import kopf
import prometheus_client
import pydantic

from . import backup_spec, cluster, reconciler
from . import spec as api
from .settings import OperatorSettings

Logger = logging.Logger | logging.LoggerAdapter[Any]
RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)
BACKUP_RESOURCE = (backup_spec.GROUP, backup_spec.VERSION, backup_spec.PLURAL)


def _settings(memo: kopf.Memo) -> OperatorSettings:
    current = memo.get("settings")
    if not isinstance(current, OperatorSettings):
        current = OperatorSettings()
        memo["settings"] = current
    return current


def _emit(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(kopf.Body(cast(Any, dict(obj))), type=type_, reason=reason, message=message[:1000])


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Logger,
                    **_: Any) -> None:
    ours = _settings(memo)
    settings.persistence.finalizer = api.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.PREFIX, key="last-handled-configuration")
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.connect_timeout = ours.connect_timeout
    settings.posting.level = logging.WARNING
    if not settings.peering.standalone:
        settings.peering.lifetime = ours.peering_lifetime
        settings.peering.priority = (ours.peering_priority if ours.peering_priority is not None
                                     else seniority(time.time()))
        settings.peering.stealth = True  # no log line per keep-alive
        logger.info("peering %r with priority %d", settings.peering.name,
                    settings.peering.priority)
    kube = cluster.Kube()
    memo["kube"] = kube
    clock = memo.get("clock")  # tests may pass their own (a callable returning UTC now)
    memo["reconciler"] = (reconciler.Reconciler(kube, ours, _emit, clock) if callable(clock)
                          else reconciler.Reconciler(kube, ours, _emit))
    if ours.metrics_port and not memo.get("metrics_started"):
        prometheus_client.start_http_server(ours.metrics_port)
        memo["metrics_started"] = True
        logger.info("metrics on :%d/metrics", ours.metrics_port)


def seniority(started: float, rng: random.Random | None = None) -> int:
    """A peering priority that is higher the earlier the replica started (kopf pauses every
    replica that sees one of higher priority, and all of them on a tie: the random
    thousandths of a millisecond make a tie practically impossible)."""
    tiebreak = (rng or random.Random()).randrange(1000)
    return 2**52 - (int(started * 1000) * 1000 + tiebreak)


@kopf.on.login()
def login(memo: kopf.Memo, logger: Logger, **kwargs: Any) -> kopf.ConnectionInfo | None:
    ours = _settings(memo)
    if ours.api_server:
        info: kopf.ConnectionInfo | None = kopf.ConnectionInfo(server=ours.api_server)
    else:
        try:
            info = kopf.login_via_client(logger=logger, **kwargs)
        except kopf.LoginError:
            info = None
        # kopf's own readers, should the library find nothing it can use.
        info = (info or kopf.login_with_service_account(logger=logger, **kwargs)
                or kopf.login_with_kubeconfig(logger=logger, **kwargs))
    kube = memo.get("kube")
    if info is not None and isinstance(kube, cluster.Kube):
        kube.configure(info)
    return info


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
@kopf.on.resume(*RESOURCE)
def validate(spec: Mapping[str, Any], memo: kopf.Memo, **_: Any) -> None:
    try:
        api.parse_spec(dict(spec))
    except pydantic.ValidationError as exc:
        raise kopf.PermanentError(f"invalid spec: {api.describe_errors(exc)}") from None
    finally:
        _wake(memo).set()


def _wake(memo: kopf.Memo) -> asyncio.Event:
    event = memo.get("wake")
    if not isinstance(event, asyncio.Event):
        event = asyncio.Event()
        memo["wake"] = event
    return event


@kopf.daemon(*RESOURCE, cancellation_timeout=30.0)
async def run(name: str, namespace: str | None, memo: kopf.Memo, stopped: kopf.DaemonStopped,
              logger: Logger, **_: Any) -> None:
    ours = _settings(memo)
    rec: reconciler.Reconciler = memo["reconciler"]
    wake = _wake(memo)
    while not stopped:
        wake.clear()
        try:
            busy = await rec.reconcile(namespace or "", name)
        except Exception as exc:  # the next cycle retries; never let the daemon die
            logger.warning("reconcile failed: %s: %s", type(exc).__name__, exc)
            busy = False
        await _sleep(wake, stopped, ours.busy_interval if busy else ours.interval)


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, delay: float) -> None:
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


@kopf.daemon(*BACKUP_RESOURCE, cancellation_timeout=30.0)
async def run_backup(name: str, namespace: str | None, memo: kopf.Memo,
                     stopped: kopf.DaemonStopped, logger: Logger, **_: Any) -> None:
    """A FederationBackup's daemon: follows it until it is Succeeded or Failed, then ends
    (a restarted operator starts it again, and it ends at once)."""
    ours = _settings(memo)
    rec: reconciler.Reconciler = memo["reconciler"]
    while not stopped:
        try:
            if await rec.backups.reconcile_backup(namespace or "", name):
                return
        except Exception as exc:  # the next cycle retries; never let the daemon die
            logger.warning("backup reconcile failed: %s: %s", type(exc).__name__, exc)
        await stopped.wait(ours.interval)


@kopf.on.delete(*RESOURCE)
async def delete(name: str, namespace: str | None, spec: Mapping[str, Any], uid: str,
                 memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    rec: reconciler.Reconciler = memo["reconciler"]
    gone = await rec.cleanup(namespace or "", name, dict(spec), uid)
    kopf.info(body, reason="Deleted", message=f"removed {len(gone)} owned object(s): "
                                              + ", ".join(gone)[:900])


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    rec = memo.get("reconciler")
    if isinstance(rec, reconciler.Reconciler):
        await rec.close()
    kube = memo.get("kube")
    if isinstance(kube, cluster.Kube):
        await kube.close()
