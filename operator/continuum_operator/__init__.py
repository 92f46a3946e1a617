"""The Continuum Federation operator: reconciles ``FederationCluster`` (continuum.dev/v1alpha1).

Layers (only ``cluster.py`` calls the Kubernetes API, only ``handlers.py`` uses ``@kopf.on``):
spec.py (API models) -> crd.py (CRD generator) -> manifests.py, certificates.py, planner.py,
status.py (pure) -> node_client.py (mTLS node API), cluster.py (Kubernetes API) -> handlers.py.

Kubernetes API resources and verbs the operator uses (derive the RBAC from this list):
- continuum.dev federationclusters: get, list, watch, patch
- continuum.dev federationclusters/status: get, patch
- apps statefulsets: get, list, watch, create, patch, delete
- core services, configmaps: get, list, create, patch, delete
- core secrets: get, list, create, patch, delete (TLS Secrets; the operator's client certificate)
- core pods: get, list, delete (ordered restarts)
- core persistentvolumeclaims: get, list, delete (retention after a confirmed member removal)
- policy poddisruptionbudgets: get, list, create, patch, delete
- cert-manager.io certificates: get, list, create, patch, delete (only with tls.mode=CertManager)
- core events, events.k8s.io events: create, patch (kopf posts Events)
- apiextensions.k8s.io customresourcedefinitions, core namespaces: list, watch (kopf's scanning;
  not needed when the operator runs with scanning disabled)
- kopf.dev kopfpeerings: none by default (the operator runs standalone, one replica)

Annotations: ``continuum.dev/force-scale-down``, ``continuum.dev/recover-quorum``,
``continuum.dev/restart``; finalizer ``continuum.dev/finalizer``; kopf progress is stored under
the ``continuum.dev`` prefix.
"""

# ``kopf run -m continuum_operator`` imports this package: register the handlers.
from . import handlers as handlers
