{{/*
The operator's command line. `kopf run -m continuum_operator` is the documented entry
point; --standalone because the chart runs exactly one replica (no KopfPeering objects,
so no peering RBAC); --liveness serves kopf's /healthz for the liveness probe.
*/}}
{{- define "cf.operatorCommand" -}}
{{- if eq (int .Values.operator.healthPort) (int .Values.operator.metricsPort) -}}
{{- fail "operator.healthPort and operator.metricsPort must differ" -}}
{{- end -}}
command:
  - kopf
  - run
  - --module=continuum_operator
  - --standalone
  - --liveness=http://0.0.0.0:{{ .Values.operator.healthPort }}/healthz
  {{- if eq .Values.watchNamespace "" }}
  - --all-namespaces
  {{- else }}
  - --namespace={{ .Values.watchNamespace }}
  {{- end }}
  {{- if eq .Values.operator.logLevel "quiet" }}
  - --quiet
  {{- else if eq .Values.operator.logLevel "verbose" }}
  - --verbose
  {{- else if eq .Values.operator.logLevel "debug" }}
  - --debug
  {{- end }}
  - --log-format=json
  {{- range .Values.operator.extraArgs }}
  - {{ . | quote }}
  {{- end }}
{{- end -}}

{{/* Settings the operator reads from its environment. */}}
{{- define "cf.operatorEnv" -}}
- name: CONTINUUM_OPERATOR_NODE_IMAGE
  value: {{ include "cf.nodeImage" . | quote }}
- name: CONTINUUM_OPERATOR_METRICS_PORT
  value: {{ .Values.operator.metricsPort | quote }}
- name: CONTINUUM_OPERATOR_WATCH_NAMESPACE
  value: {{ .Values.watchNamespace | quote }}
{{- end -}}
