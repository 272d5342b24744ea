{{- define "pybaetyl-edge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name: <release>-<chart>, or the release name if it already holds the chart name.
*/}}
{{- define "pybaetyl-edge.fullname" -}}
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

{{/*
A name derived from the full name: (dict "suffix" "token" "context" $).
*/}}
{{- define "pybaetyl-edge.suffixed" -}}
{{- printf "%s-%s" (include "pybaetyl-edge.fullname" .context | trunc (int (sub 62 (len .suffix)))) .suffix | trimSuffix "-" -}}
{{- end -}}

{{- define "pybaetyl-edge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pybaetyl-edge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pybaetyl-edge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "pybaetyl-edge.labels" -}}
helm.sh/chart: {{ include "pybaetyl-edge.chart" . }}
{{ include "pybaetyl-edge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pybaetyl
{{- end -}}

{{- define "pybaetyl-edge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "pybaetyl-edge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pybaetyl-edge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pybaetyl-edge.tokenSecretName" -}}
{{- if .Values.activation.existingSecret -}}
{{- .Values.activation.existingSecret -}}
{{- else -}}
{{- include "pybaetyl-edge.suffixed" (dict "suffix" "activation" "context" .) -}}
{{- end -}}
{{- end -}}

{{- define "pybaetyl-edge.tokenSecretKey" -}}
{{- if .Values.activation.existingSecret -}}
{{- .Values.activation.existingSecretKey -}}
{{- else -}}
token
{{- end -}}
{{- end -}}

{{- define "pybaetyl-edge.claimName" -}}
{{- default (include "pybaetyl-edge.suffixed" (dict "suffix" "state" "context" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/*
Cluster-scoped names must be unique across namespaces: <release namespace>-<full name>.
*/}}
{{- define "pybaetyl-edge.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "pybaetyl-edge.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Refuse values that cannot work, with a message that says what to change.
*/}}
{{- define "pybaetyl-edge.validate" -}}
{{- $hint := "copy it from the install command that `baetyl node init <name>` prints" -}}
{{- if not (hasPrefix "https://" .Values.activation.url) -}}
{{- fail (printf "activation.url must be the cloud's activation endpoint, https://<host>:<port>; %s." $hint) -}}
{{- end -}}
{{- if not (regexMatch "^[0-9a-fA-F]{64}$" .Values.activation.caSha256) -}}
{{- fail (printf "activation.caSha256 must be the 64 hex digits of the cloud CA's SHA-256; %s." $hint) -}}
{{- end -}}
{{- if not (or .Values.activation.token .Values.activation.existingSecret) -}}
{{- fail (printf "set activation.existingSecret (a Secret holding the install token) or activation.token; %s." $hint) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" .Values.apps.namespace) -}}
{{- fail (printf "apps.namespace %q is not a Kubernetes namespace name (a DNS label)." .Values.apps.namespace) -}}
{{- end -}}
{{- end -}}
