{{/*
The operator's namespaced permissions, least privilege: exactly the list in the docstring of
operator/continuum_operator/__init__.py (tests/operator/test_helm_rbac.py checks both ways).
No `update` (the operator only patches), no `list`/`watch` where it reads by name.
*/}}
{{- define "cf.operatorRules" -}}
# The custom resource: kopf watches it and patches its annotations and finalizer (progress
# storage); the operator writes status. `kubectl scale` (the /scale subresource) is the
# user's verb, not the operator's.
- apiGroups: ["continuum.dev"]
  resources: ["federationclusters"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["continuum.dev"]
  resources: ["federationclusters/status"]
  verbs: ["get", "patch"]
# Every child names its FederationCluster as owner with blockOwnerDeletion: true. Where the
# OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift), setting that needs
# `update` on the owner's finalizers, or every create is refused with 403.
- apiGroups: ["continuum.dev"]
  resources: ["federationclusters/finalizers"]
  verbs: ["update"]
# FederationBackups: a daemon follows each one; the schedule creates them and retention
# deletes them (after their data). Their Jobs name them as owner with blockOwnerDeletion.
- apiGroups: ["continuum.dev"]
  resources: ["federationbackups"]
  verbs: ["get", "list", "watch", "patch", "create", "delete"]
- apiGroups: ["continuum.dev"]
  resources: ["federationbackups/status"]
  verbs: ["get", "patch"]
- apiGroups: ["continuum.dev"]
  resources: ["federationbackups/finalizers"]
  verbs: ["update"]
# Jobs run `continuum-federation backup create|delete` and `restore` from the node image
# (the target's credentials reach these pods only). Never patched: a Job is made once.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "create", "delete"]
# Owned children, reconciled: created, patched on drift, deleted when no longer wanted.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "create", "patch", "delete"]
# TLS Secrets of the operator-managed CA and the operator's own client certificate.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
# Pods are never created by the operator: it only deletes them, in the order it chooses,
# for OnDelete rolling updates and quorum recovery, and lists a Job's pods for its outcome
# (their termination messages).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "delete"]
# PVCs come from the StatefulSet, except the first member's of a cluster created from a
# backup (made for the restore, then adopted); the operator grows them when
# spec.storage.size grows (online expansion) and deletes one only after its member's
# removal from Raft is confirmed (the retention policy).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "create", "patch", "delete"]
# Events for every action (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# cert-manager Certificates for the nodes and the operator's client identity
# (tls.mode: CertManager).
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "create", "patch", "delete"]
# kopf's peering between the operator's replicas: each one keeps its record fresh in the
# peering object's status, and watches the others'.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"{{ if eq .Values.watchNamespace "" }}, "clusterkopfpeerings"{{ end }}]
  verbs: ["list", "watch", "patch"]
{{- end -}}
