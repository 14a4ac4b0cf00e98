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

{{/* The auth section of a Vault or OpenBao connection: "auth" (the
values), "dir" (where its Secret is mounted), "values" (their name). */}}
{{- define "meshca.vaultAuth" -}}
{{- $auth := .auth -}}
{{- if eq $auth.method "kubernetes" -}}
kubernetes:
  mount: {{ $auth.kubernetes.mount }}
  role: {{ $auth.kubernetes.role }}
  jwt_file: /var/run/secrets/kubernetes.io/serviceaccount/token
{{- else if eq $auth.method "approle" -}}
approle:
  mount: {{ $auth.approle.mount }}
  role_id: {{ required (printf "%s.auth.approle.roleId is required" .values) $auth.approle.roleId }}
  secret_id_file: {{ .dir }}/secret-id
{{- else if eq $auth.method "token" -}}
token_file: {{ .dir }}/token
{{- else -}}
{{- fail (printf "%s.auth.method must be kubernetes, approle or token" .values) -}}
{{- end -}}
{{- end -}}

{{/* The volumes of a Vault or OpenBao connection's CA and credentials:
"name" (their prefix), "conn" (the values), "values" (their name). */}}
{{- define "meshca.vaultVolumes" -}}
{{- if .conn.caSecretName }}
- name: {{ .name }}-ca
  secret:
    secretName: {{ .conn.caSecretName }}
{{- end }}
{{- if eq .conn.auth.method "approle" }}
- name: {{ .name }}-auth
  secret:
    secretName: {{ required (printf "%s.auth.approle.secretIdSecretName is required" .values) .conn.auth.approle.secretIdSecretName }}
    items: [{ key: secret-id, path: secret-id }]
{{- end }}
{{- if eq .conn.auth.method "token" }}
- name: {{ .name }}-auth
  secret:
    secretName: {{ required (printf "%s.auth.token.secretName is required" .values) .conn.auth.token.secretName }}
    items: [{ key: token, path: token }]
{{- end }}
{{- end -}}

{{/* Their mounts. */}}
{{- define "meshca.vaultMounts" -}}
{{- if .conn.caSecretName }}
- name: {{ .name }}-ca
  mountPath: /etc/meshca/{{ .name }}-ca
  readOnly: true
{{- end }}
{{- if ne .conn.auth.method "kubernetes" }}
- name: {{ .name }}-auth
  mountPath: /etc/meshca/{{ .name }}-auth
  readOnly: true
{{- end }}
{{- end -}}
