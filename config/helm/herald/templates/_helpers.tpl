{{/* Labels every object carries; `component` adds app.kubernetes.io/component. */}}
{{- define "herald.labels" -}}
app.kubernetes.io/name: herald
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* The image reference: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "herald.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
