{{/*
The operator's namespaced permissions, least privilege. Keep in step with the list in
operator/continuum_operator/__init__.py; tests/operator/test_helm_rbac.py checks both.
*/}}
{{- define "cf.operatorRules" -}}
# The custom resource: kopf watches it, patches annotations/finalizers (its progress
# storage), and the operator writes status; /scale is how kubectl scale and HPAs reach it.
- apiGroups: ["continuum.dev"]
  resources: ["federationclusters"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["continuum.dev"]
  resources: ["federationclusters/status", "federationclusters/scale"]
  verbs: ["get", "patch", "update"]
# Owned children, reconciled (created, patched on drift, removed when no longer wanted).
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps", "secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Pods are never created by the operator: it only deletes them, in its chosen order,
# for OnDelete rolling updates.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
# PVCs come from the StatefulSet; the operator only applies the retention policy after
# a member's removal is confirmed (and patches them to resize).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# Events for every action (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# cert-manager: node and operator-client Certificates, and the issuer chain of the
# operator-managed CA.
- apiGroups: ["cert-manager.io"]
  resources: ["certificates", "issuers"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- end -}}
