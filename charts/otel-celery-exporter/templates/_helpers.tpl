{{- define "otel-celery-exporter.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otel-celery-exporter.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "otel-celery-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otel-celery-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "otel-celery-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "otel-celery-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "otel-celery-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "otel-celery-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret and key the broker URL comes from. */}}
{{- define "otel-celery-exporter.brokerSecret" -}}
{{- if .Values.broker.existingSecret }}{{ .Values.broker.existingSecret }}{{ else }}{{ include "otel-celery-exporter.fullname" . }}-broker{{ end }}
{{- end }}

{{- define "otel-celery-exporter.webConfigSecret" -}}
{{- if .Values.webConfig.existingSecret }}{{ .Values.webConfig.existingSecret }}{{ else }}{{ include "otel-celery-exporter.fullname" . }}-web-config{{ end }}
{{- end }}

{{- define "otel-celery-exporter.webConfigEnabled" -}}
{{- if or .Values.webConfig.existingSecret .Values.webConfig.content }}true{{ end }}
{{- end }}

{{- define "otel-celery-exporter.scheme" -}}
{{- if .Values.webConfig.tls }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* The exporter's arguments: `config` as flags, then what the chart sets itself. */}}
{{- define "otel-celery-exporter.args" -}}
{{- $owned := list "broker-url" "web-config-file" "web.config.file" "port" "host" "static-label" "static-labels" "metrics-exporters" }}
{{- range $flag, $value := .Values.config }}
{{- if has $flag $owned }}
{{- fail (printf "config.%s is set by the chart from its own values (see values.yaml)" $flag) }}
{{- end }}
{{- if kindIs "bool" $value }}
- {{ printf "--%s%s" (ternary "" "no-" $value) $flag | quote }}
{{- else }}
- {{ printf "--%s=%v" $flag $value | quote }}
{{- end }}
{{- end }}
- "--host=0.0.0.0"
- {{ printf "--port=%v" .Values.port | quote }}
- {{ printf "--metrics-exporters=%s" (join "," .Values.metricsExporters) | quote }}
{{- range $name, $value := .Values.staticLabels }}
- {{ printf "--static-label=%s=%v" $name $value | quote }}
{{- end }}
{{- if include "otel-celery-exporter.webConfigEnabled" . }}
- "--web.config.file=/etc/otel-celery-exporter/web-config.yml"
{{- end }}
{{- end }}
