{{/* Name helpers, labels and derived settings of the m40llm chart. */}}

{{/* The chart name, or nameOverride. */}}
{{- define "m40llm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: fullnameOverride, else <release>-<name> (just the
release name when it already contains the chart name). */}}
{{- define "m40llm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels that select this release's pods. */}}
{{- define "m40llm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "m40llm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "m40llm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "m40llm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The server image reference. */}}
{{- define "m40llm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The claim that holds the model, or "" when the demo model is served. */}}
{{- define "m40llm.modelClaim" -}}
{{- if .Values.model.existingClaim }}
{{- .Values.model.existingClaim }}
{{- else if .Values.model.url }}
{{- printf "%s-model" (include "m40llm.fullname" .) }}
{{- end }}
{{- end }}

{{/* The pod's termination grace period: preStop sleep + drain timeout + a
margin for stopping the gRPC server, unless set (and then long enough). */}}
{{- define "m40llm.terminationGracePeriod" -}}
{{- $drain := int (ceil (float64 .Values.server.drainTimeout)) }}
{{- $floor := add (int .Values.preStopSleepSeconds) $drain }}
{{- if kindIs "string" .Values.terminationGracePeriodSeconds }}
{{- if .Values.terminationGracePeriodSeconds }}
{{- fail "terminationGracePeriodSeconds must be a number of seconds or empty" }}
{{- end }}
{{- add $floor 25 }}
{{- else }}
{{- $set := int .Values.terminationGracePeriodSeconds }}
{{- if le $set $floor }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + server.drainTimeout (%d)" $set $floor) }}
{{- end }}
{{- $set }}
{{- end }}
{{- end }}

{{/* A value as an environment variable: whole numbers without a decimal
point or exponent (YAML numbers arrive as float64), anything else as text. */}}
{{- define "m40llm.envValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* A label map as k=v,k=v (sorted), for kubectl -l and messages. */}}
{{- define "m40llm.inlineLabels" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- $pairs = append $pairs (printf "%s=%s" $k (toString $v)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
