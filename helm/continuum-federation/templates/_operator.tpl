{{/*
The operator's command line: `kopf run -m continuum_operator`, which is what the image's
`continuum-operator` entrypoint runs, plus kopf's log-level flags. With several replicas they
peer through the peering object (templates/peering.yaml): one works, the others stand by.
One replica runs --standalone. --liveness serves kopf's /healthz for the liveness probe.
*/}}
{{- define "cf.operatorCommand" -}}
{{- if eq (int .Values.operator.healthPort) (int .Values.operator.metricsPort) -}}
{{- fail "operator.healthPort and operator.metricsPort must differ" -}}
{{- end -}}
command:
  - kopf
  - run
  - --module=continuum_operator
  {{- if gt (int .Values.operator.replicas) 1 }}
  - --peering={{ include "cf.fullname" . }}
  {{- else }}
  - --standalone
  {{- end }}
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

{{/* Settings the operator reads (continuum_operator/settings.py, prefix CONTINUUM_OPERATOR_). */}}
{{- define "cf.operatorEnv" -}}
- name: CONTINUUM_OPERATOR_METRICS_PORT
  value: {{ .Values.operator.metricsPort | quote }}
- name: CONTINUUM_OPERATOR_PEERING_LIFETIME
  value: {{ .Values.operator.peeringLifetime | quote }}
{{- range $key, $value := .Values.operator.settings }}
- name: CONTINUUM_OPERATOR_{{ snakecase $key | upper }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}
