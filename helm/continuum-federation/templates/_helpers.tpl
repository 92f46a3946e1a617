{{/* Chart name, overridable. */}}
{{- define "cf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "cf.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cf.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Standard labels (https://helm.sh/docs/chart_best_practices/labels/), without a component. */}}
{{- define "cf.baseLabels" -}}
helm.sh/chart: {{ include "cf.chart" . }}
app.kubernetes.io/name: {{ include "cf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: continuum-federation
{{- end -}}

{{/* Standard labels of the operator's own objects. */}}
{{- define "cf.labels" -}}
{{ include "cf.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels that select the operator pod; never change them (Deployment selectors are immutable). */}}
{{- define "cf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "cf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cf.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag or repository@digest; the tag defaults to appVersion. */}}
{{- define "cf.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "cf.nodeImage" -}}
{{- printf "%s:%s" .Values.nodeImage.repository (default .Chart.AppVersion .Values.nodeImage.tag) -}}
{{- end -}}

{{/* Where user-facing objects of the release go (the example cluster, the CA Issuer): the
watched namespace, else the release namespace. */}}
{{- define "cf.clusterNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace -}}
{{- end -}}

{{/* The namespace the operator watches ("" = all). */}}
{{- define "cf.clusterWide" -}}
{{- if eq .Values.watchNamespace "" -}}true{{- end -}}
{{- end -}}
