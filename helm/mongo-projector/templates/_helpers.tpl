{{/*
Names and labels.
*/}}
{{- define "mongo-projector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mongo-projector.fullname" -}}
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

{{- define "mongo-projector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mongo-projector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mongo-projector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mongo-projector.labels" -}}
helm.sh/chart: {{ include "mongo-projector.chart" . }}
{{ include "mongo-projector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: projector
app.kubernetes.io/part-of: mongo-projector
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mongo-projector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mongo-projector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mongo-projector.secretName" -}}
{{- default (printf "%s-mongodb" (include "mongo-projector.fullname" .)) .Values.mongodb.existingSecret }}
{{- end }}

{{- define "mongo-projector.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The HTTP port: the number at the end of config.http.address ("0.0.0.0:9464", "[::]:9464").
*/}}
{{- define "mongo-projector.httpPort" -}}
{{- $address := .Values.config.http.address | toString }}
{{- $port := regexFind "[0-9]+$" $address }}
{{- if not $port }}
{{- fail (printf "config.http.address %q must end with :PORT" $address) }}
{{- end }}
{{- $port }}
{{- end }}

{{/*
A duration string ("10s", "1m30s", "250ms", "1h 5m") in whole seconds, rounded up. Units: ms, s,
m, h, d (values.schema.json accepts exactly these). Fails on anything else rather than guessing.
*/}}
{{- define "mongo-projector.durationSeconds" -}}
{{- $text := . | toString }}
{{- $millis := 0 }}
{{- range $part := regexFindAll "[0-9]+(ms|s|m|h|d)" $text -1 }}
{{- $n := regexFind "^[0-9]+" $part | atoi }}
{{- $unit := trimPrefix (regexFind "^[0-9]+" $part) $part }}
{{- $scale := get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000) $unit }}
{{- $millis = add $millis (mul $n $scale) }}
{{- end }}
{{- if or (ne (regexReplaceAll "[0-9]+(ms|s|m|h|d)| " $text "") "") (eq $text "") }}
{{- fail (printf "cannot read the duration %q: write it like 250ms, 10s, 5m, 1h or 1m30s" $text) }}
{{- end }}
{{- div (add $millis 999) 1000 }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the drain deadline plus a margin, so the kubelet never sends
SIGKILL while the daemon is still writing its final checkpoints.
*/}}
{{- define "mongo-projector.terminationGracePeriodSeconds" -}}
{{- $deadline := "10s" }}
{{- with .Values.config.shutdown }}{{ with .deadline }}{{ $deadline = . }}{{ end }}{{ end }}
{{- add (include "mongo-projector.durationSeconds" $deadline | atoi) .Values.terminationGraceExtraSeconds }}
{{- end }}

{{/*
TOML rendering of the config value: the values tree becomes the same document one would write
by hand (top-level tables, [[projections]], and [projections.<table>] sub-tables), with anything
deeper written as inline tables and arrays. Strings are emitted as JSON strings, which are valid
TOML basic strings; keys are quoted unless they are bare keys; null values are left out.
*/}}
{{- define "mongo-projector.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "mongo-projector.tomlValue" -}}
{{- if kindIs "map" . -}}
{ {{- $first := true }}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
{{- if not $first }},{{ end }} {{ include "mongo-projector.tomlKey" $k }} = {{ include "mongo-projector.tomlValue" $v }}
{{- $first = false }}
{{- end }}
{{- end }} }
{{- else if kindIs "slice" . -}}
[
{{- range $i, $v := . }}
{{- if kindIs "invalid" $v }}{{ fail "config: a list may not contain null" }}{{ end }}
{{- if $i }},{{ end }} {{ include "mongo-projector.tomlValue" $v }}
{{- end }} ]
{{- else if kindIs "string" . -}}
{{ toJson . }}
{{- else if or (kindIs "bool" .) (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) (kindIs "float32" .) (kindIs "int32" .) -}}
{{ toJson . }}
{{- else -}}
{{ fail (printf "config: cannot write %v (%s) as TOML" . (kindOf .)) }}
{{- end -}}
{{- end }}

{{/* "true" when a value is written as its own [table] / [[array of tables]] at this depth. */}}
{{- define "mongo-projector.tomlIsTable" -}}
{{- if and (kindIs "map" .v) (lt (int .depth) 2) }}true
{{- else if and (kindIs "slice" .v) (lt (int .depth) 1) .v }}
{{- $all := true }}
{{- range $e := .v }}{{ if not (kindIs "map" $e) }}{{ $all = false }}{{ end }}{{ end }}
{{- if $all }}true{{ end }}
{{- end }}
{{- end }}

{{- define "mongo-projector.tomlTable" -}}
{{- $prefix := .prefix }}
{{- $depth := .depth }}
{{- range $k, $v := .table }}
{{- if and (not (kindIs "invalid" $v)) (not (include "mongo-projector.tomlIsTable" (dict "v" $v "depth" $depth))) }}
{{ include "mongo-projector.tomlKey" $k }} = {{ include "mongo-projector.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if include "mongo-projector.tomlIsTable" (dict "v" $v "depth" $depth) }}
{{- $path := include "mongo-projector.tomlKey" $k }}
{{- if $prefix }}{{ $path = printf "%s.%s" $prefix $path }}{{ end }}
{{- if kindIs "map" $v }}

[{{ $path }}]
{{- include "mongo-projector.tomlTable" (dict "prefix" $path "table" $v "depth" (add1 $depth)) }}
{{- else }}
{{- range $e := $v }}

[[{{ $path }}]]
{{- include "mongo-projector.tomlTable" (dict "prefix" $path "table" $e "depth" (add1 $depth)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mongo-projector.configToml" -}}
# mongo-projector configuration, rendered by the Helm chart from .Values.config.
# The connection string is not here: it comes from the MONGODB_URI environment variable.
{{- include "mongo-projector.tomlTable" (dict "prefix" "" "table" .Values.config "depth" 0) }}
{{ end }}

{{/*
The pod's affinity: .Values.affinity, plus the chart's podAntiAffinity (podAntiAffinity.mode)
unless .Values.affinity brings its own. The rule selects this release's pods by the same labels
as the Deployment's selector, so it spreads exactly the pods the Deployment owns.
*/}}
{{- define "mongo-projector.affinity" -}}
{{- $affinity := deepCopy (.Values.affinity | default dict) }}
{{- $spread := .Values.podAntiAffinity }}
{{- if and (ne $spread.mode "none") (not (hasKey $affinity "podAntiAffinity")) }}
{{- $term := dict "topologyKey" $spread.topologyKey "labelSelector" (dict "matchLabels" (include "mongo-projector.selectorLabels" . | fromYaml)) }}
{{- if eq $spread.mode "required" }}
{{- $_ := set $affinity "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $term)) }}
{{- else if eq $spread.mode "preferred" }}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" (int $spread.weight) "podAffinityTerm" $term))) }}
{{- else }}
{{- fail (printf "podAntiAffinity.mode %q: write preferred, required or none" $spread.mode) }}
{{- end }}
{{- end }}
{{- with $affinity }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
The helm test image: repository, then :tag and @digest when given.
*/}}
{{- define "mongo-projector.testImage" -}}
{{- $image := .Values.test.image }}
{{- $ref := $image.repository }}
{{- with $image.tag }}{{ $ref = printf "%s:%s" $ref . }}{{ end }}
{{- with $image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end }}
{{- $ref }}
{{- end }}
