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

{{/* The labels that select a component's pods: (dict "context" . "component" "web").
The component tells the web, the worker, the migrations and the helm test apart:
nothing of one selects the pods of another. */}}
{{- define "service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "service.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Every object's labels: (dict "context" . "component" "web"); objects that both
components share (settings, Secret, ServiceAccount, rules, dashboards) have no
component. */}}
{{- define "service.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .context.Chart.Name .context.Chart.Version | replace "+" "_" }}
{{ include "service.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: {{ .context.Chart.Name }}
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

{{/* The components, each a Deployment with the objects around it: the web (the app
behind Nginx) always, the task worker when the service has tasks. Range over
`include "service.components" . | splitList " "`. */}}
{{- define "service.components" -}}
web{{ if include "service.worker" . }} worker{{ end }}
{{- end }}

{{/* A component's objects' name: (dict "context" . "component" "worker"). The web's
objects carry the release's full name, the worker's that name and "-worker". */}}
{{- define "service.componentFullname" -}}
{{- $fullname := include "service.fullname" .context }}
{{- if eq .component "web" }}
{{- $fullname }}
{{- else }}
{{- printf "%s-%s" ($fullname | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component }}
{{- end }}
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

{{/* Pod Security Standards "restricted", for every pod of the chart: the app's user. */}}
{{- define "service.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* A component's pods spread over zones and nodes: (dict "context" . "component" "web"). */}}
{{- define "service.topologySpread" -}}
{{- $ := .context }}
{{- $scope := . }}
{{- range $key := list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
- topologyKey: {{ $key }}
  maxSkew: {{ $.Values.topologySpread.maxSkew }}
  whenUnsatisfiable: {{ $.Values.topologySpread.whenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "service.selectorLabels" $scope | nindent 6 }}
  # Counts the pods of the same rollout only.
  matchLabelKeys: [pod-template-hash]
{{- end }}
{{- end }}

{{/* A component's pod annotations: (dict "context" . "component" "web"). A changed
setting or secret, and for the web a changed Nginx file, rolls its pods. */}}
{{- define "service.podAnnotations" -}}
{{- $ := .context }}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") $ | sha256sum }}
{{- if eq .component "web" }}
checksum/nginx: {{ include (print $.Template.BasePath "/configmap-nginx.yaml") $ | sha256sum }}
{{- end }}
{{- if not $.Values.secret.existingSecret }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") $ | sha256sum }}
{{- end }}
{{- with $.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The app's environment: settings from the ConfigMap, secrets from the Secret. */}}
{{- define "service.envFrom" -}}
- configMapRef:
    name: {{ include "service.fullname" . }}
- secretRef:
    name: {{ include "service.secretName" . }}
{{- end }}

{{/* The OpenTelemetry variables of a container that sends traces, when
tracing.endpoint is set, else nothing: (dict "context" . "component" "web"
"container" "app"). OTEL_SERVICE_NAME is the `service` label the ServiceMonitors
give the metrics, so that a dashboard's service finds its traces. The pod's names
come from the downward API; Kubernetes expands $(VAR) of the variables above it. */}}
{{- define "service.tracing.env" -}}
{{- $ := .context }}
{{- $tracing := $.Values.tracing }}
{{- if $tracing.endpoint }}
{{- $attributes := list
  "k8s.namespace.name=$(K8S_NAMESPACE_NAME)"
  "k8s.pod.name=$(K8S_POD_NAME)"
  "k8s.node.name=$(K8S_NODE_NAME)"
  (printf "k8s.deployment.name=%s" (include "service.componentFullname" .))
  (printf "k8s.container.name=%s" .container) }}
{{- range $name, $value := $tracing.resourceAttributes }}
{{- $attributes = append $attributes (printf "%s=%s" $name $value) }}
{{- end }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $tracing.endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ $.Chart.Name | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $tracing.sampler | quote }}
{{- if hasSuffix "traceidratio" $tracing.sampler }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $tracing.samplerRatio | toString | quote }}
{{- end }}
{{- with $tracing.headersSecret.name }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $tracing.headersSecret.key }}}
{{- end }}
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef: {fieldPath: spec.nodeName}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
{{- end }}
{{- end }}

{{/* Sentry's variables of a container of the service's code, when
sentry.dsnSecret.name is set, else nothing. The DSN comes from its Secret, never
a value. */}}
{{- define "service.sentry.env" -}}
{{- with .Values.sentry.dsnSecret.name }}
- name: SENTRY_DSN
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.sentry.dsnSecret.key }}}
- name: SENTRY_ENVIRONMENT
  value: {{ $.Values.sentry.environment | quote }}
{{- end }}
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
{{- with .Values.tracing.endpoint }}
{{- $url := urlParse . }}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" | default (ternary "443" "80" (eq $url.scheme "https")) }}
# The OpenTelemetry collector.
- ports:
    - port: {{ int $port }}
      protocol: TCP
  {{- with $.Values.tracing.egressTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Nginx's worker processes: one per CPU of its container's limit, rounded up
(500m: 1, 1500m: 2). Not "auto", which counts the node's CPUs. */}}
{{- define "service.nginx.workerProcesses" -}}
{{- $cpu := toString .Values.nginx.resources.limits.cpu }}
{{- $millicores := ternary (trimSuffix "m" $cpu | float64) (mulf ($cpu | float64) 1000) (hasSuffix "m" $cpu) }}
{{- max 1 (divf $millicores 1000 | ceil | int) }}
{{- end }}

{{/* What the chart refuses, with the reason. */}}
{{- define "service.validate" -}}
{{- if and (not .Values.secret.existingSecret) (not .Values.secret.secretKey) }}
{{- fail "secret.secretKey (DJANGO_SECRET_KEY) is required, or secret.existingSecret naming a Secret that holds it" }}
{{- end }}
{{- if and (ne (include "service.database" .) "sqlite") (not .Values.secret.existingSecret) (not .Values.secret.databaseUrl) }}
{{- fail "secret.databaseUrl (DATABASE_URL of the database server) is required, or secret.existingSecret naming a Secret that holds it" }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add .Values.preStopSleepSeconds .Values.server.gracefulTimeout) }}
{{- fail "terminationGracePeriodSeconds must exceed preStopSleepSeconds + server.gracefulTimeout, or the kubelet kills requests still draining" }}
{{- end }}
{{- if and .Values.config.oidc.issuer (not .Values.config.oidc.audience) }}
{{- fail "config.oidc.audience (OIDC_AUDIENCE) is required with config.oidc.issuer: without it, a token the issuer made for another service would open this one" }}
{{- end }}
{{- if and (or .Values.ingress.enabled .Values.httpRoute.enabled) (not .Values.nginx.trustedProxies) }}
{{- fail "nginx.trustedProxies is required with ingress.enabled or httpRoute.enabled: the addresses of the ingress controller's (gateway's) pods, whose X-Forwarded-Proto and X-Forwarded-For Nginx may believe" }}
{{- end }}
{{- if include "service.worker" . }}
{{- if and (include "service.redisBroker" .) (not .Values.secret.existingSecret) (not .Values.secret.redisUrl) }}
{{- fail (printf "secret.redisUrl (REDIS_URL, the broker of %s tasks) is required, or secret.existingSecret naming a Secret that holds it" (include "service.tasks" .)) }}
{{- end }}
{{- if le (int .Values.worker.terminationGracePeriodSeconds) (int .Values.worker.shutdownTimeout) }}
{{- fail "worker.terminationGracePeriodSeconds must exceed worker.shutdownTimeout (WORKER_SHUTDOWN_TIMEOUT), or the kubelet kills tasks still finishing" }}
{{- end }}
{{- end }}
{{- range $component := include "service.components" . | splitList " " }}
{{- $values := ternary $.Values.worker $.Values (eq $component "worker") }}
{{- $key := ternary "autoscaling" "worker.autoscaling" (eq $component "web") }}
{{- if and $values.autoscaling.enabled (gt (int $values.autoscaling.minReplicas) (int $values.autoscaling.maxReplicas)) }}
{{- fail (printf "%s.minReplicas must not exceed %s.maxReplicas" $key $key) }}
{{- end }}
{{- end }}
{{- end }}
