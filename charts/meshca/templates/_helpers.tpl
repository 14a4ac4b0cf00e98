{{- define "meshca.name" -}}meshca{{- end -}}

{{- define "meshca.labels" -}}
app.kubernetes.io/name: meshca
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "meshca.selector" -}}
app.kubernetes.io/name: meshca
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
