{{/* Chart name. */}}
{{- define "reaper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: the release name, with "-reaper" unless it contains it. */}}
{{- define "reaper.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "reaper.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "reaper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reaper
{{- end }}

{{/* Selector labels of one component: include "reaper.selectorLabels" (list . "webhook") */}}
{{- define "reaper.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "reaper.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Labels of one component's objects: include "reaper.componentLabels" (list . "webhook") */}}
{{- define "reaper.componentLabels" -}}
{{ include "reaper.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Name of one component's objects (Deployment, ServiceAccount, ClusterRole, ...). */}}
{{- define "reaper.componentName" -}}
{{- printf "%s-%s" (include "reaper.fullname" (index . 0)) (index . 1) }}
{{- end }}

{{- define "reaper.webhookService" -}}
{{- include "reaper.componentName" (list . "webhook") }}
{{- end }}

{{- define "reaper.webhookConfigName" -}}
{{- include "reaper.componentName" (list . "webhook") }}
{{- end }}

{{- define "reaper.certificateName" -}}
{{- include "reaper.componentName" (list . "webhook") }}
{{- end }}

{{/* The Secret the webhook serves from. */}}
{{- define "reaper.certSecret" -}}
{{- if eq .Values.certs.mode "provided" }}
{{- required "certs.mode=provided needs certs.provided.secretName (an existing kubernetes.io/tls Secret in the release namespace)" .Values.certs.provided.secretName }}
{{- else }}
{{- default (printf "%s-webhook-tls" (include "reaper.fullname" .)) .Values.certs.secretName }}
{{- end }}
{{- end }}

{{/* repository:tag (tag defaults to appVersion) or repository@digest: include "reaper.image" (list . .Values.image.controller) */}}
{{- define "reaper.image" -}}
{{- $ := index . 0 -}}
{{- $img := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* Pod-level security context of every pod: Pod Security "restricted" except the agent's hostPID. */}}
{{- define "reaper.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{/* Container-level security context of every container (values: securityContext). */}}
{{- define "reaper.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/* Global flags and the env every component gets. */}}
{{- define "reaper.logArgs" -}}
- --log-level={{ .Values.logLevel }}
- --log-format={{ .Values.logFormat }}
{{- end }}

{{- define "reaper.podNamespaceEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}

{{/* Probes on the admin port. */}}
{{- define "reaper.probes" -}}
livenessProbe:
  httpGet: {path: /livez, port: admin}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: admin}
  periodSeconds: 5
  failureThreshold: 2
{{- end }}

{{/* The webhook's image-resolution flags. Only what differs from the webhook's defaults is passed. */}}
{{- define "reaper.registryArgs" -}}
{{- if ne .Values.registry.auth "anonymous" }}
- --registry-auth={{ .Values.registry.auth }}
{{- end }}
{{- with .Values.registry.insecureRegistries }}
- --insecure-registries={{ join "," . }}
{{- end }}
{{- with .Values.registry.tagTTL }}
- --tag-ttl={{ . }}
{{- end }}
{{- with .Values.registry.lookupTimeout }}
- --lookup-timeout={{ . }}
{{- end }}
{{- if not .Values.registry.warmup }}
- --warm-up=false
{{- end }}
{{- end }}

{{/* operator.policyReports as the flag spells it: an unquoted YAML `off` arrives as false. */}}
{{- define "reaper.policyReports" -}}
{{- $v := .Values.operator.policyReports -}}
{{- if or (kindIs "bool" $v) (not $v) -}}off{{- else -}}{{ $v }}{{- end -}}
{{- end }}

{{/* What the chart adds to each CRD's metadata (templates/crds.yaml): the release's labels and,
with crds.keep, Helm's keep policy. */}}
{{- define "reaper.crdMetadata" -}}
  {{- if .Values.crds.keep }}
  annotations:
    helm.sh/resource-policy: keep
  {{- end }}
  labels:
    {{- include "reaper.labels" . | nindent 4 }}
{{- end }}

{{/* The namespaces never governed, as a JSON list: the release namespace and
webhook.excludedNamespaces (src/scope.rs adds the component's own namespace the same way). */}}
{{- define "reaper.excludedNamespaces" -}}
{{- concat (list .Release.Namespace) .Values.webhook.excludedNamespaces | uniq | toJson -}}
{{- end }}

{{/* Which pods Reaper governs (docs/install.md#choosing-what-reaper-governs), as the flags of the
webhook, the operator and `check` (src/scope.rs). The excluded namespaces come first, as always. */}}
{{- define "reaper.scopeArgs" -}}
- --excluded-namespaces={{ join "," .Values.webhook.excludedNamespaces }}
- --selection={{ .Values.webhook.selection }}
- --pod-opt-in={{ .Values.webhook.podOptIn }}
{{- with .Values.webhook.namespaceSelector }}
- {{ printf "--namespace-selector=%s" (toJson .) | quote }}
{{- end }}
{{- with .Values.webhook.objectSelector }}
- {{ printf "--object-selector=%s" (toJson .) | quote }}
{{- end }}
{{- end }}

{{/* A user selector (webhook.namespaceSelector / objectSelector) as matchExpressions only, so it
can be appended to the chart's own: matchLabels become `In` terms. */}}
{{- define "reaper.scope.userExpressions" -}}
{{- $out := list -}}
{{- range $k, $v := (.matchLabels | default dict) -}}
{{- $out = append $out (dict "key" $k "operator" "In" "values" (list $v)) -}}
{{- end -}}
{{- range (.matchExpressions | default list) -}}
{{- $out = append $out . -}}
{{- end -}}
{{- toYaml $out -}}
{{- end }}

{{/* The selectors of the webhook registration's entries and of the admission policies' bindings,
one item per entry: the same rule as src/scope.rs, so the API server calls Reaper for exactly the
pods it governs. Opt-in: namespaces labelled enabled, and (podOptIn) pods labelled enabled in
namespaces labelled neither enabled nor disabled — two disjoint entries, so no pod is sent twice.
Opt-out: every namespace not labelled disabled. Every entry leaves out the excluded namespaces and
pods labelled disabled, and adds the user's selectors. */}}
{{- define "reaper.scope.entries" -}}
{{- $excluded := include "reaper.excludedNamespaces" . | fromJsonArray -}}
{{- $notExcluded := dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" $excluded -}}
{{- $userNs := include "reaper.scope.userExpressions" .Values.webhook.namespaceSelector | fromYamlArray -}}
{{- $userObj := include "reaper.scope.userExpressions" .Values.webhook.objectSelector | fromYamlArray -}}
{{- $notDisabled := dict "key" "reaper.dev/inject" "operator" "NotIn" "values" (list "disabled") -}}
{{- $enabled := dict "reaper.dev/inject" "enabled" -}}
{{- /* Pods not opted out: the object side of the entry for whole namespaces. */ -}}
{{- $pods := dict "matchExpressions" (concat (list $notDisabled) $userObj) -}}
{{- $entries := list -}}
{{- if eq .Values.webhook.selection "opt-out" -}}
{{- $ns := dict "matchExpressions" (concat (list $notExcluded $notDisabled) $userNs) -}}
{{- $entries = append $entries (dict "name" "pods" "namespaceSelector" $ns "objectSelector" $pods) -}}
{{- else -}}
{{- $ns := dict "matchLabels" $enabled "matchExpressions" (concat (list $notExcluded) $userNs) -}}
{{- $entries = append $entries (dict "name" "pods" "namespaceSelector" $ns "objectSelector" $pods) -}}
{{- if .Values.webhook.podOptIn -}}
{{- $unlabelled := dict "key" "reaper.dev/inject" "operator" "NotIn" "values" (list "enabled" "disabled") -}}
{{- $ns := dict "matchExpressions" (concat (list $notExcluded $unlabelled) $userNs) -}}
{{- $optedIn := dict "matchLabels" $enabled -}}
{{- with $userObj }}{{- $_ := set $optedIn "matchExpressions" . -}}{{- end -}}
{{- $entries = append $entries (dict "name" "opted-in-pods" "namespaceSelector" $ns "objectSelector" $optedIn) -}}
{{- end -}}
{{- end -}}
{{- toYaml $entries -}}
{{- end }}
