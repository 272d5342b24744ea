{{/*
The chart name, shortened to a DNS label.
*/}}
{{- define "pybaetyl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name: <release>-<chart>, or the release name if it already holds the chart name.
*/}}
{{- define "pybaetyl.fullname" -}}
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
A name derived from the full name: (dict "suffix" "ca" "context" $).
*/}}
{{- define "pybaetyl.suffixed" -}}
{{- printf "%s-%s" (include "pybaetyl.fullname" .context | trunc (int (sub 62 (len .suffix)))) .suffix | trimSuffix "-" -}}
{{- end -}}

{{- define "pybaetyl.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels of one component: (dict "component" "cloud" "context" $).
*/}}
{{- define "pybaetyl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pybaetyl.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Labels of every object: (dict "component" "cloud" "context" $).
*/}}
{{- define "pybaetyl.labels" -}}
helm.sh/chart: {{ include "pybaetyl.chart" .context }}
{{ include "pybaetyl.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: pybaetyl
{{- end -}}

{{- define "pybaetyl.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "pybaetyl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pybaetyl.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The Secret holding the CA (ca.crt, ca.key): the user's, or the one the hook Job creates.
*/}}
{{- define "pybaetyl.caSecretName" -}}
{{- if .Values.ca.existingSecret -}}
{{- .Values.ca.existingSecret -}}
{{- else -}}
{{- include "pybaetyl.suffixed" (dict "suffix" "ca" "context" .) -}}
{{- end -}}
{{- end -}}

{{/*
The Secret and key holding the database URL; empty when SQLite is used.
*/}}
{{- define "pybaetyl.databaseSecretName" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else if .Values.database.url -}}
{{- include "pybaetyl.suffixed" (dict "suffix" "database" "context" .) -}}
{{- end -}}
{{- end -}}

{{- define "pybaetyl.databaseSecretKey" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecretKey -}}
{{- else -}}
url
{{- end -}}
{{- end -}}

{{- define "pybaetyl.claimName" -}}
{{- default (include "pybaetyl.suffixed" (dict "suffix" "data" "context" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/*
The public Service's name (activation, and the broker in embedded mode).
*/}}
{{- define "pybaetyl.publicServiceName" -}}
{{- include "pybaetyl.fullname" . -}}
{{- end -}}

{{- define "pybaetyl.apiServiceName" -}}
{{- include "pybaetyl.suffixed" (dict "suffix" "api" "context" .) -}}
{{- end -}}

{{/*
The host nodes are told to reach: api.publicHost (rendered as a template), else the public
Service's cluster DNS name.
*/}}
{{- define "pybaetyl.publicHost" -}}
{{- if .Values.api.publicHost -}}
{{- tpl .Values.api.publicHost . -}}
{{- else -}}
{{- printf "%s.%s.svc" (include "pybaetyl.publicServiceName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "pybaetyl.isIP" -}}
{{- if or (regexMatch "^[0-9]+(\\.[0-9]+){3}$" .) (contains ":" .) -}}true{{- end -}}
{{- end -}}

{{/*
The server certificate's DNS names and IP addresses, comma-separated as the config expects.
*/}}
{{- define "pybaetyl.serverDnsNames" -}}
{{- $host := include "pybaetyl.publicHost" . -}}
{{- $names := list -}}
{{- if not (include "pybaetyl.isIP" $host) -}}
{{- $names = append $names $host -}}
{{- end -}}
{{- range $service := list (include "pybaetyl.publicServiceName" .) (include "pybaetyl.apiServiceName" .) -}}
{{- $names = concat $names (list $service (printf "%s.%s" $service $.Release.Namespace) (printf "%s.%s.svc" $service $.Release.Namespace) (printf "%s.%s.svc.%s" $service $.Release.Namespace $.Values.clusterDomain)) -}}
{{- end -}}
{{- $names = concat $names (list "localhost") .Values.pki.extraDnsNames -}}
{{- $names | uniq | join "," -}}
{{- end -}}

{{- define "pybaetyl.serverIps" -}}
{{- $host := include "pybaetyl.publicHost" . -}}
{{- $ips := list "127.0.0.1" "::1" -}}
{{- if include "pybaetyl.isIP" $host -}}
{{- $ips = append $ips $host -}}
{{- end -}}
{{- concat $ips .Values.pki.extraIps | uniq | join "," -}}
{{- end -}}

{{/*
Refuse values that cannot work, with a message that says what to change.
*/}}
{{- define "pybaetyl.validate" -}}
{{- if not (has .Values.mode (list "embedded" "replicated")) -}}
{{- fail (printf "mode is %q; use embedded (one replica, SQLite, embedded broker) or replicated (MySQL, an external MQTT broker)." .Values.mode) -}}
{{- end -}}
{{- if eq .Values.mode "embedded" -}}
{{- if ne (int .Values.replicaCount) 1 -}}
{{- fail (printf "replicaCount is %d, but embedded mode runs exactly one replica (the broker and SQLite live in the pod); set mode=replicated with database.* and bus.* to run more." (int .Values.replicaCount)) -}}
{{- end -}}
{{- else -}}
{{- if not (or .Values.database.url .Values.database.existingSecret) -}}
{{- fail "replicated mode needs a MySQL database shared by the replicas: set database.existingSecret (and database.existingSecretKey) or database.url." -}}
{{- end -}}
{{- if not (hasPrefix "mysql://" (default "mysql://" .Values.database.url)) -}}
{{- fail "replicated mode needs MySQL: database.url must start with mysql:// (SQLite cannot be shared by replicas)." -}}
{{- end -}}
{{- if not .Values.bus.url -}}
{{- fail "replicated mode needs an external MQTT broker: set bus.url (e.g. mqtts://emqx.mqtt.svc:8883) and bus.publicAddress." -}}
{{- end -}}
{{- if not .Values.bus.publicAddress -}}
{{- fail "replicated mode needs bus.publicAddress: the host:port of the external broker that nodes connect to." -}}
{{- end -}}
{{- if not .Values.persistence.enabled -}}
{{- fail "replicated mode needs persistence.enabled: the replicas share the CA journal and the keys in the data directory." -}}
{{- end -}}
{{- if and (not .Values.persistence.existingClaim) (not (has "ReadWriteMany" .Values.persistence.accessModes)) -}}
{{- fail "replicated mode needs a data directory every replica can write: set persistence.accessModes to [ReadWriteMany] (with a StorageClass that supports it), or persistence.existingClaim." -}}
{{- end -}}
{{- end -}}
{{- end -}}
