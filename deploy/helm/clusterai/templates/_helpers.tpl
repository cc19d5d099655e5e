{{/* Names, labels and the few values several templates share. */}}

{{- define "clusterai.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-clusterai, or the release name when it already contains the chart's name. Kept to
45 characters so that "<fullname>-scheduler" stays a valid Service name (63 at most). */}}
{{- define "clusterai.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "clusterai.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "clusterai.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "head"). */}}
{{- define "clusterai.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clusterai.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "clusterai.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "clusterai.storeSecret" -}}
{{- if .Values.store.existingSecret -}}
{{- .Values.store.existingSecret -}}
{{- else if .Values.store.url -}}
{{- printf "%s-store" (include "clusterai.fullname" .) -}}
{{- else -}}
{{- fail "the head needs its PostgreSQL store: set store.existingSecret (a Secret with the URL) or store.url" -}}
{{- end -}}
{{- end -}}

{{- define "clusterai.storeSecretKey" -}}
{{- if .Values.store.existingSecret -}}{{ .Values.store.existingSecretKey }}{{- else -}}url{{- end -}}
{{- end -}}

{{- define "clusterai.apiScheme" -}}
{{- if .Values.tls.api -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* The REST API as the worker pods (the drain hook) reach it. */}}
{{- define "clusterai.apiURL" -}}
{{- printf "%s://%s-api:%d" (include "clusterai.apiScheme" .) (include "clusterai.fullname" .) (int .Values.head.apiPort) -}}
{{- end -}}

{{- define "clusterai.schedulerAddress" -}}
{{- printf "tls://%s-scheduler:%d" (include "clusterai.fullname" .) (int .Values.head.daskPort) -}}
{{- end -}}

{{/* Fail early on values that cannot work together. */}}
{{- define "clusterai.checks" -}}
{{- $a := .Values.autoscaling -}}
{{- if and $a.keda.enabled $a.hpa.enabled -}}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are exclusive: KEDA makes an HPA of its own, and two HPAs on one Deployment fight" -}}
{{- end -}}
{{- if and (or $a.keda.enabled $a.hpa.enabled) (not $a.enabled) -}}
{{- fail "KEDA and the HPA scale on clusterai_desired_workers, which the head exports only with autoscaling.enabled" -}}
{{- end -}}
{{- if and $a.hpa.enabled (lt (int $a.minReplicas) 1) -}}
{{- fail "autoscaling.minReplicas must be at least 1 for an HPA (scaling to zero needs KEDA)" -}}
{{- end -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "autoscaling.minReplicas (%d) is greater than autoscaling.maxReplicas (%d)" (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- if or (hasKey .Values.config "store") (hasKey .Values.config "autoscale") -}}
{{- fail "config.store and config.autoscale are set by the chart (store.* and autoscaling.*); leave them out of config" -}}
{{- end -}}
{{- end -}}
