"""The Continuum Federation operator: reconciles ``FederationCluster`` and ``FederationBackup``
(continuum.dev/v1alpha1).

Layers (only ``cluster.py`` calls the Kubernetes API, only ``handlers.py`` uses ``@kopf.on``):
fields.py, spec.py, backup_spec.py (API models) -> crd.py (CRD generator) -> manifests.py,
certificates.py, planner.py, status.py, schedule.py, jobs.py (pure) -> node_client.py (mTLS
node API), cluster.py (Kubernetes API) -> reconciler.py, backups.py (shells) -> handlers.py.

Kubernetes API resources and verbs the operator uses (derive the RBAC from this list; all in
the namespaces it watches, so a namespaced Role works with ``--namespace``):
- continuum.dev federationclusters: get, list, watch, patch (kopf: finalizer, progress annotations)
- continuum.dev federationclusters/status: get, patch
- continuum.dev federationclusters/finalizers: update (children carry blockOwnerDeletion, which
  clusters that enforce owner-reference permissions, such as OpenShift, allow only with it)
- apps statefulsets: get, create, patch, delete
- core services, configmaps: get, create, patch, delete
- core secrets: get, create, patch, delete (TLS Secrets; it reads the operator's client certificate)
- continuum.dev federationbackups: get, list, watch, patch, create, delete (a daemon per backup;
  scheduled backups are created, and deleted by retention)
- continuum.dev federationbackups/status: get, patch
- continuum.dev federationbackups/finalizers: update (their Jobs carry blockOwnerDeletion)
- batch jobs: get, create, delete (backup, restore and retention Jobs; a failed retention Job
  is deleted to be tried again)
- core pods: list, delete (ordered restarts, quorum recovery; Jobs' pods for their outcome)
- core persistentvolumeclaims: get, list, create, patch, delete (online expansion; the first
  member's claim of a cluster restored from a backup; retention, after a confirmed removal)
- policy poddisruptionbudgets: get, create, patch, delete
- cert-manager.io certificates: get, create, patch, delete (only with tls.mode=CertManager)
- core events: create (kopf posts the Events)
- storage.k8s.io storageclasses: get (cluster-scoped: whether a class allows expansion)
- apiextensions.k8s.io customresourcedefinitions, core namespaces: list, watch (kopf's scanning;
  kopf only warns without them)
- kopf.dev clusterkopfpeerings, kopfpeerings: list, watch, patch (peering of the replicas:
  ClusterKopfPeering when watching every namespace, KopfPeering in the watched one)
Outbound: the nodes' mTLS API on port 7000 of each pod IP (a NetworkPolicy must allow it).
High availability: replicas peer through kopf (``--peering``); the one with the highest priority
works, the others stand by and take over when its peering record expires (``handlers.configure``).
Settings: ``CONTINUUM_OPERATOR_*`` (settings.py); metrics on :9090/metrics, kopf liveness on
:8081/healthz (``continuum-operator --liveness``).

Annotations: ``continuum.dev/force-scale-down``, ``continuum.dev/recover-quorum``,
``continuum.dev/restart``; finalizer ``continuum.dev/finalizer``; kopf progress is stored under
the ``continuum.dev`` prefix.
"""

# ``kopf run -m continuum_operator`` imports this package: register the handlers.
from . import handlers as handlers
