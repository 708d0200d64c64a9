{{/* What only the web's pods have. The app (bin/serve on 8000, reached only by
Nginx), its Nginx sidecar (public 8080, metrics 9100, stub_status 127.0.0.1:8081),
the Nginx exporter (9113) and, with SQLite, the database's backups. */}}
{{- define "service.web.containers" -}}
{{- $sqlite := eq (include "service.database" .) "sqlite" }}
{{- $granian := eq (include "service.server" .) "granian" }}
{{- $migrate := and $sqlite .Values.migrations.enabled }}
initContainers:
  # One step per pod before it serves: Nginx gets the static files that the
  # image collected at build time{{ if $migrate }}, then the SQLite database (the pod's
  # own file) is migrated{{ end }}.
  - name: prepare
    image: {{ include "service.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    {{- if $migrate }}
    command: ["sh", "-c", "cp -R /app/staticfiles/. /static/ && exec python manage.py migrate --noinput"]
    envFrom:
      {{- include "service.envFrom" . | nindent 6 }}
    {{- with include "service.sentry.env" . }}
    env:
      {{- . | nindent 6 }}
    {{- end }}
    {{- else }}
    command: ["cp", "-R", "/app/staticfiles/.", "/static/"]
    {{- end }}
    securityContext:
      {{- include "service.containerSecurityContext" 10001 | nindent 6 }}
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      - name: static
        mountPath: /static
      {{- if $migrate }}
      - name: data
        mountPath: /data
      {{- end }}
containers:
  - name: app
    image: {{ include "service.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    envFrom:
      {{- include "service.envFrom" . | nindent 6 }}
    {{- $tracing := include "service.tracing.env" (dict "context" . "component" "web" "container" "app") }}
    {{- with list $tracing (include "service.sentry.env" .) | compact | join "\n" }}
    env:
      {{- . | nindent 6 }}
    {{- end }}
    ports:
      - name: app
        containerPort: 8000
      {{- if $granian }}
      - name: granian-metrics
        containerPort: 9400
      {{- end }}
    # Probes send Host: localhost, which DJANGO_ALLOWED_HOSTS always holds.
    startupProbe:
      httpGet:
        path: /healthz
        port: app
        httpHeaders: [{name: Host, value: localhost}]
      {{- toYaml .Values.probes.startup | nindent 6 }}
    livenessProbe:
      httpGet:
        path: /healthz
        port: app
        httpHeaders: [{name: Host, value: localhost}]
      {{- toYaml .Values.probes.liveness | nindent 6 }}
    readinessProbe:
      httpGet:
        path: /readyz
        port: app
        httpHeaders: [{name: Host, value: localhost}]
      {{- toYaml .Values.probes.readiness | nindent 6 }}
    lifecycle:
      preStop:
        sleep:
          seconds: {{ .Values.preStopSleepSeconds }}
    securityContext:
      {{- include "service.containerSecurityContext" 10001 | nindent 6 }}
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      {{- if $sqlite }}
      - name: data
        mountPath: /data
      {{- end }}
  - name: nginx
    image: {{ include "service.imageRef" (dict "image" .Values.nginx.image) }}
    imagePullPolicy: {{ .Values.nginx.image.pullPolicy }}
    # The service's configuration, as a whole directory (its includes are
    # relative to it), not the image's entrypoint, which edits /etc/nginx; as
    # many worker processes as its CPU limit allows.
    command:
      - nginx
      - -c
      - /etc/nginx/service/nginx.conf
      - -g
      - "daemon off; worker_processes {{ include "service.nginx.workerProcesses" . }};"
    ports:
      - name: http
        containerPort: 8080
      - name: metrics
        containerPort: 9100
    readinessProbe:
      tcpSocket:
        port: http
      periodSeconds: 5
    livenessProbe:
      tcpSocket:
        port: http
      periodSeconds: 10
    lifecycle:
      # Then SIGQUIT (the image's stop signal): Nginx finishes open requests.
      preStop:
        sleep:
          seconds: {{ .Values.preStopSleepSeconds }}
    securityContext:
      {{- include "service.containerSecurityContext" 101 | nindent 6 }}
    resources:
      {{- toYaml .Values.nginx.resources | nindent 6 }}
    volumeMounts:
      - name: nginx-tmp
        mountPath: /tmp
      - name: static
        mountPath: /srv/{{ .Chart.Name }}/static
        readOnly: true
      - name: nginx-config
        mountPath: /etc/nginx/service
        readOnly: true
  {{- if $sqlite }}
  {{- if .Values.backup.enabled }}
  # Online backups of the database (manage.py backup_database): one at the pod's
  # start, then one every intervalSeconds, into the database's own volume (only
  # this pod can mount its ReadWriteOnce claim, so no CronJob could). SIGTERM ends
  # its wait at once. Each backup, or its failure, is a JSON log line.
  - name: backup
    image: {{ include "service.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command:
      - python
      - manage.py
      - backup_database
      - /data/backups
      - --keep
      - {{ .Values.backup.keep | quote }}
      - --every
      - {{ .Values.backup.intervalSeconds | quote }}
    envFrom:
      {{- include "service.envFrom" . | nindent 6 }}
    {{- with include "service.sentry.env" . }}
    env:
      {{- . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- include "service.containerSecurityContext" 10001 | nindent 6 }}
    resources:
      {{- toYaml .Values.backup.resources | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      - name: data
        mountPath: /data
  {{- end }}
  {{- end }}
  {{- if .Values.exporter.enabled }}
  - name: nginx-exporter
    image: {{ include "service.imageRef" (dict "image" .Values.exporter.image) }}
    imagePullPolicy: {{ .Values.exporter.image.pullPolicy }}
    args:
      - --nginx.scrape-uri=http://127.0.0.1:8081/stub_status
      - --web.listen-address=:9113
    ports:
      - name: nginx-metrics
        containerPort: 9113
    livenessProbe:
      httpGet:
        path: /metrics
        port: nginx-metrics
      periodSeconds: 30
    securityContext:
      {{- include "service.containerSecurityContext" 65534 | nindent 6 }}
    resources:
      {{- toYaml .Values.exporter.resources | nindent 6 }}
  {{- end }}
{{- end }}

{{/* The web's volumes besides /tmp: Nginx's, and the SQLite database's. */}}
{{- define "service.web.volumes" -}}
{{- $sqlite := eq (include "service.database" .) "sqlite" }}
- name: nginx-tmp
  emptyDir:
    sizeLimit: 256Mi
- name: static
  emptyDir:
    sizeLimit: 64Mi
- name: nginx-config
  configMap:
    name: {{ include "service.fullname" . }}-nginx
{{- if $sqlite }}
- name: data
  {{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ default (include "service.fullname" .) .Values.persistence.existingClaim }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end }}
{{- end }}
