{{/* What only the worker's pods have: bin/worker from the app's image, with the
app's settings and Secret. It takes no traffic: no readiness probe (nothing routes
to it; its headless Service only names the pods to scrape), no preStop sleep. On
SIGTERM it stops taking tasks and gives the running ones worker.shutdownTimeout to
finish. */}}
{{- define "service.worker.containers" -}}
containers:
  - name: worker
    image: {{ include "service.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["bin/worker"]
    envFrom:
      {{- include "service.envFrom" . | nindent 6 }}
    env:
      - name: WORKER_CONCURRENCY
        value: {{ .Values.worker.concurrency | quote }}
      - name: WORKER_SHUTDOWN_TIMEOUT
        value: {{ .Values.worker.shutdownTimeout | quote }}
      # Scraped and probed on the pod IP (the worker's NetworkPolicy applies).
      - name: WORKER_METRICS_HOST
        value: "0.0.0.0"
      - name: WORKER_METRICS_PORT
        value: "9500"
      # On the pod's emptyDir: the root filesystem is read-only.
      - name: METRICS_DIR
        value: /tmp/metrics
      {{- with include "service.tracing.env" (dict "context" . "component" "worker" "container" "worker") }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- with include "service.sentry.env" . }}
      {{- . | nindent 6 }}
      {{- end }}
    ports:
      - name: metrics
        containerPort: 9500
    # /healthz: 200 while the library's worker process runs (core/task_worker.py).
    startupProbe:
      httpGet:
        path: /healthz
        port: metrics
      {{- toYaml .Values.worker.probes.startup | nindent 6 }}
    livenessProbe:
      httpGet:
        path: /healthz
        port: metrics
      {{- toYaml .Values.worker.probes.liveness | nindent 6 }}
    securityContext:
      {{- include "service.containerSecurityContext" 10001 | nindent 6 }}
    resources:
      {{- toYaml .Values.worker.resources | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
{{- end }}
