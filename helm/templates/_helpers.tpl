{{/* Names, labels and the facts every template shares. */}}

{{- define "service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "service.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "service.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "service.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "service.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ .Chart.Name }}
{{- end }}

{{/* Facts of the image (Chart.yaml annotations), not values. */}}
{{- define "service.server" -}}
{{- index .Chart.Annotations "django-asgi-platform/server" }}
{{- end }}
{{- define "service.database" -}}
{{- index .Chart.Annotations "django-asgi-platform/database" }}
{{- end }}
{{- define "service.tasks" -}}
{{- index .Chart.Annotations "django-asgi-platform/tasks" }}
{{- end }}
{{/* "true" when the service has a task worker, else "". */}}
{{- define "service.worker" -}}
{{- if ne (include "service.tasks" .) "none" }}true{{ end }}
{{- end }}
{{/* "true" when the task broker is Redis (the others queue in the database). */}}
{{- define "service.redisBroker" -}}
{{- if eq (index .Chart.Annotations "django-asgi-platform/task-broker") "redis" }}true{{ end }}
{{- end }}

{{/* The task worker's objects: a name and labels of their own, so that nothing of
the web (its Deployment, Service, HPA, ServiceMonitor) selects the worker's pods. */}}
{{- define "service.workerFullname" -}}
{{- printf "%s-worker" (include "service.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "service.workerSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-worker" (include "service.name" . | trunc 56 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "service.workerLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "service.workerSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ .Chart.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "service.secretName" -}}
{{- default (include "service.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/* repository@digest when a digest is given, else repository:tag. */}}
{{- define "service.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .default .image.tag) }}
{{- end }}
{{- end }}

{{- define "service.image" -}}
{{- include "service.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) }}
{{- end }}

{{/* Pod Security Standards "restricted", for a container running as `uid`. */}}
{{- define "service.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The app's environment: settings from the ConfigMap, secrets from the Secret. */}}
{{- define "service.envFrom" -}}
- configMapRef:
    name: {{ include "service.fullname" . }}
- secretRef:
    name: {{ include "service.secretName" . }}
{{- end }}

{{/* The egress rules of the service's pods (web and worker). */}}
{{- define "service.egress" -}}
{{- if .Values.networkPolicy.allowAllEgress -}}
- {}
{{- else -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/* What the chart refuses, with the reason. */}}
{{- define "service.validate" -}}
{{- if and (not .Values.secret.existingSecret) (not .Values.secret.secretKey) }}
{{- fail "secret.secretKey (DJANGO_SECRET_KEY) is required, or secret.existingSecret naming a Secret that holds it" }}
{{- end }}
{{- if and (eq (include "service.database" .) "postgresql") (not .Values.secret.existingSecret) (not .Values.secret.databaseUrl) }}
{{- fail "secret.databaseUrl (DATABASE_URL of PostgreSQL) is required, or secret.existingSecret naming a Secret that holds it" }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add .Values.preStopSleepSeconds .Values.server.gracefulTimeout) }}
{{- fail "terminationGracePeriodSeconds must exceed preStopSleepSeconds + server.gracefulTimeout, or the kubelet kills requests still draining" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if include "service.worker" . }}
{{- if and (include "service.redisBroker" .) (not .Values.secret.existingSecret) (not .Values.secret.redisUrl) }}
{{- fail (printf "secret.redisUrl (REDIS_URL, the broker of %s tasks) is required, or secret.existingSecret naming a Secret that holds it" (include "service.tasks" .)) }}
{{- end }}
{{- if le (int .Values.worker.terminationGracePeriodSeconds) (int .Values.worker.shutdownTimeout) }}
{{- fail "worker.terminationGracePeriodSeconds must exceed worker.shutdownTimeout (WORKER_SHUTDOWN_TIMEOUT), or the kubelet kills tasks still finishing" }}
{{- end }}
{{- if and .Values.worker.autoscaling.enabled (gt (int .Values.worker.autoscaling.minReplicas) (int .Values.worker.autoscaling.maxReplicas)) }}
{{- fail "worker.autoscaling.minReplicas must not exceed worker.autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
{{- end }}
