{{- /*
  The MutatingAdmissionPolicy install (admission.engine: policy | both; #17): what the webhook's
  planner (src/webhook/decide.rs) decides without a registry, written in CEL and run inside the
  API server. The two policies (admission-policy-share.yaml, admission-policy-wrap.yaml) share
  the match rules and the variables below; each variable mirrors one step of the planner, and
  `decision` says which policy acts. Where the planner would need something CEL cannot do (read
  an image config from a registry) or that is rare and intricate (a mount already at the mount
  path, the pod already carrying an install container), `decision` is "webhook": the policies
  leave the pod alone, and with engine "both" the webhook (called after them) decides it.

  The output must equal the webhook's for the same values, byte for byte in the stored pod
  (tests/control_plane/admission_policy.rs runs both fixture corpora through both engines).
*/}}

{{- define "reaper.admission.reaperPath" -}}
{{ .Values.webhook.mountPath }}/reaper
{{- end }}

{{- /* Which pods reach the policies: the webhook registration's rules, without the excluded
  namespaces and opted-out pods. Which of those a policy acts on is its bindings' business
  (reaper.admission.bindings): one per webhook entry, with that entry's selectors. */}}
{{- define "reaper.admission.match" -}}
# Policies fail open like the webhook's default: a pod is never refused because of Reaper.
failurePolicy: Ignore
# The policies decline pods that already carry an install container, so a second run after a
# later webhook changed the pod could add nothing: never reinvoke them.
reinvocationPolicy: Never
matchConstraints:
  resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [pods]
  matchPolicy: Equivalent
  namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: NotIn
        values: {{ include "reaper.excludedNamespaces" . }}
  # Opted-out pods.
  objectSelector:
    matchExpressions:
      - key: reaper.dev/inject
        operator: NotIn
        values: [disabled]
matchConditions:
  # Mirror (static) pods cannot be changed: the kubelet owns them.
  - name: not-a-mirror-pod
    expression: "!has(object.metadata.annotations) || !('kubernetes.io/config.mirror' in object.metadata.annotations)"
  # The webhook ignores a pod without a name (the API server rejects it anyway).
  - name: named
    expression: "object.metadata.?name.orValue('') != '' || object.metadata.?generateName.orValue('') != ''"
{{- end }}

{{- /* The bindings of the policy named by the argument: one per entry of the scope rule
  (reaper.scope.entries), so a policy acts on exactly the pods the webhook would be called for.
  The entries are disjoint: a pod matches one binding at most and is mutated once. */}}
{{- define "reaper.admission.bindings" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- range $i, $entry := include "reaper.scope.entries" $root | fromYamlArray }}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata:
  name: {{ $name }}{{ if $i }}-{{ $entry.name }}{{ end }}
  labels:
    {{- include "reaper.componentLabels" (list $root "admission-policy") | nindent 4 }}
spec:
  policyName: {{ $name }}
  matchResources:
    namespaceSelector:
      {{- toYaml $entry.namespaceSelector | nindent 6 }}
    objectSelector:
      {{- toYaml $entry.objectSelector | nindent 6 }}
{{- end }}
{{- end }}

{{- define "reaper.admission.variables" -}}
{{- $mount := .Values.webhook.mountPath }}
{{- $reaper := include "reaper.admission.reaperPath" . }}
{{- $install := .Values.webhook.install }}
variables:
  # The pod's reaper.dev/mode annotation (trimmed, any case) over webhook.defaultMode; a value
  # that is no mode falls back to the default, as in the webhook.
  - name: mode
    expression: >-
      object.metadata.?annotations[?"reaper.dev/mode"].orValue("").trim().lowerAscii()
      in ["auto", "inject", "share", "off", "image"]
      ? object.metadata.annotations["reaper.dev/mode"].trim().lowerAscii()
      : {{ .Values.webhook.defaultMode | quote }}
  - name: hostPID
    expression: object.spec.?hostPID.orValue(false)
  - name: shared
    expression: object.spec.?shareProcessNamespace.orValue(false)
  # spec.os.name or a kubernetes.io/os node selector, any case.
  - name: windows
    expression: >-
      object.spec.?os.?name.orValue("").lowerAscii() == "windows" ||
      object.spec.?nodeSelector[?"kubernetes.io/os"].orValue("").lowerAscii() == "windows"
  - name: init
    expression: object.spec.?initContainers.orValue([])
  # Init containers first, then the regular ones: the order of the webhook's targets and of the
  # names in reaper.dev/injected.
  - name: all
    expression: variables.init + object.spec.containers
  # The JSON pointer of each container of `all`.
  - name: paths
    expression: >-
      variables.all.transformList(i, c, i < size(variables.init)
      ? "/spec/initContainers/" + string(i)
      : "/spec/containers/" + string(i - size(variables.init)))
  # reaper.dev/containers limits the targets (present but empty: none).
  - name: hasOnly
    expression: object.metadata.?annotations[?"reaper.dev/containers"].hasValue()
  - name: only
    expression: object.metadata.?annotations[?"reaper.dev/containers"].orValue("").split(",").map(n, n.trim())
  # An earlier pass (or a copied manifest) already installed the reaper, with the init container
  # or as an image volume (install::find_install, find_image_volume): convergence with what is
  # there is the webhook's job.
  - name: hasInstall
    expression: >-
      variables.init.exists(c, c.?command.orValue([]) == ["/reaper", "--install", {{ $reaper | quote }}])
      || object.spec.?volumes.orValue([]).exists(v, has(v.image) && (
           v.image.?reference.orValue("") == {{ include "reaper.image" (list . .Values.image.reaper) | quote }}
           || variables.all.exists(c, c.?volumeMounts.orValue([]).exists(m,
                m.name == v.name && m.mountPath.startsWith({{ $mount | quote }})))))
  # How the reaper gets into the pod (capability::delivery with no ReaperPolicy): mode image
  # always mounts the reaper image as an image volume; auto (and share turned into wrapping by
  # hostPID) does so when webhook.imageVolumes is "true"; otherwise, and with "detect" (which
  # needs the nodes, that CEL cannot see; docs/engines.md), the reaper-install init container.
  - name: delivery
    expression: >-
      variables.mode == "image"
      {{- if eq (toString .Values.webhook.imageVolumes) "true" }}
      || variables.mode == "auto" || variables.mode == "share"
      {{- end }}
      ? "image" : "init"
  # What each container of `all` is, as the planner classifies targets (src/webhook/argv.rs):
  #   none      not a target (an init container that is no native sidecar, or filtered out);
  #   lookup    no command: its argv is the image's, which only a registry knows;
  #   wrapped   already runs the reaper;
  #   init      already runs a known init (basename, as argv::known_init);
  #   conflict  a volumeMount at or under the mount path;
  #   wrap      to be wrapped.
  - name: classes
    expression: >-
      variables.all.transformList(i, c,
        (i < size(variables.init) && c.?restartPolicy.orValue("") != "Always")
          || (variables.hasOnly && !(c.name in variables.only)) ? "none"
        : size(c.?command.orValue([])) == 0 ? "lookup"
        : c.command[0] == {{ $reaper | quote }} ? "wrapped"
        : c.command[0].substring(c.command[0].lastIndexOf("/") + 1)
            in ["tini", "dumb-init", "catatonit", "reaper", "docker-init", "init", "systemd", "s6-svscan", "my_init"]
          || c.command[0].substring(c.command[0].lastIndexOf("/") + 1).startsWith("tini-") ? "init"
        : c.?volumeMounts.orValue([]).exists(m, m.mountPath == {{ $mount | quote }} || m.mountPath.startsWith({{ printf "%s/" $mount | quote }})) ? "conflict"
        : "wrap")
  # Which containers of `all` get the read-only mount of the volume: those wrapped now, and
  # those already wrapped that mount nothing at the mount path.
  - name: needsMount
    expression: >-
      variables.all.transformList(i, c, variables.classes[i] == "wrap" || (variables.classes[i] == "wrapped"
        && !c.?volumeMounts.orValue([]).exists(m, m.mountPath.startsWith({{ $mount | quote }})
             && m.mountPath.substring({{ len $mount }}).replace("/", "") == "")))
  # Free names for the volume and the install container (install::free_name: base, base-1, ...).
  # The base name is nearly always free: the candidates are only tried when it is not.
  - name: volumeNames
    expression: >-
      (!object.spec.?volumes.orValue([]).exists(v, v.name == "reaper-bin") &&
       !variables.all.exists(c, c.?volumeMounts.orValue([]).exists(m, m.name == "reaper-bin")))
      ? ["reaper-bin"]
      : ["reaper-bin-1", "reaper-bin-2", "reaper-bin-3", "reaper-bin-4", "reaper-bin-5"].filter(n,
          !object.spec.?volumes.orValue([]).exists(v, v.name == n) &&
          !variables.all.exists(c, c.?volumeMounts.orValue([]).exists(m, m.name == n)))
  - name: installNames
    expression: >-
      !variables.all.exists(c, c.name == "reaper-install") &&
      !object.spec.?ephemeralContainers.orValue([]).exists(c, c.name == "reaper-install")
      ? ["reaper-install"]
      : ["reaper-install-1", "reaper-install-2", "reaper-install-3", "reaper-install-4", "reaper-install-5"].filter(n,
          !variables.all.exists(c, c.name == n) &&
          !object.spec.?ephemeralContainers.orValue([]).exists(c, c.name == n))
  # What the webhook would do:
  #   ignore           mode off;
  #   skipped:windows  a Windows pod;
  #   share            shareProcessNamespace (mode share without hostPID, or auto on a pod whose
  #                    PID namespace is already shared);
  #   webhook          a registry lookup (or a case left to the webhook) is needed;
  #   skipped:no-targets, skipped:already-init, inject: as the planner.
  - name: decision
    expression: >-
      variables.mode == "off" ? "ignore"
      : variables.windows ? "skipped:windows"
      : (variables.mode == "share" && !variables.hostPID) || (variables.mode == "auto" && variables.shared) ? "share"
      : variables.hasInstall || variables.classes.exists(k, k == "lookup" || k == "conflict")
        || size(variables.volumeNames) == 0
        || (variables.delivery == "init" && size(variables.installNames) == 0) ? "webhook"
      : variables.classes.all(k, k == "none") ? "skipped:no-targets"
      : !variables.classes.exists(k, k == "wrap" || k == "wrapped") ? "skipped:already-init"
      : "inject"
  - name: protects
    expression: variables.decision == "share" || variables.decision == "inject"
  # reaper.dev/injected as the webhook writes it.
  - name: injected
    expression: >-
      variables.decision == "inject"
      ? "inject:" + variables.all.transformList(i, c, variables.classes[i] == "wrap" || variables.classes[i] == "wrapped", c.name).join(",")
      : variables.decision
  # The pod's QoS class as the API server computes it (install::qos_class), so the install
  # container keeps it: pod-level resources decide when set; otherwise BestEffort without any
  # cpu/memory request or limit, Guaranteed when every container limits both and the summed
  # requests equal the summed limits.
  - name: podLevel
    expression: object.spec.?resources.?requests.hasValue() || object.spec.?resources.?limits.hasValue()
  - name: sums
    expression: >-
      [
        variables.all.map(c, quantity(string(c.?resources.?requests[?"cpu"].orValue("0"))).asApproximateFloat()).sum(),
        variables.all.map(c, quantity(string(c.?resources.?requests[?"memory"].orValue("0"))).asApproximateFloat()).sum(),
        variables.all.map(c, quantity(string(c.?resources.?limits[?"cpu"].orValue("0"))).asApproximateFloat()).sum(),
        variables.all.map(c, quantity(string(c.?resources.?limits[?"memory"].orValue("0"))).asApproximateFloat()).sum()
      ]
  - name: everyLimited
    expression: >-
      variables.all.all(c,
        quantity(string(c.?resources.?limits[?"cpu"].orValue("0"))).asApproximateFloat() != 0.0 &&
        quantity(string(c.?resources.?limits[?"memory"].orValue("0"))).asApproximateFloat() != 0.0)
  # Pod-level resources: [limit cpu, limit memory, request cpu, request memory].
  - name: podSums
    expression: >-
      [
        quantity(string(object.spec.?resources.?limits[?"cpu"].orValue("0"))).asApproximateFloat(),
        quantity(string(object.spec.?resources.?limits[?"memory"].orValue("0"))).asApproximateFloat(),
        quantity(string(object.spec.?resources.?requests[?"cpu"].orValue("0"))).asApproximateFloat(),
        quantity(string(object.spec.?resources.?requests[?"memory"].orValue("0"))).asApproximateFloat()
      ]
  # No cpu or memory request or limit anywhere: BestEffort without parsing a quantity.
  - name: noResources
    expression: >-
      !variables.podLevel && !variables.all.exists(c,
        c.?resources.?requests[?"cpu"].hasValue() || c.?resources.?requests[?"memory"].hasValue() ||
        c.?resources.?limits[?"cpu"].hasValue() || c.?resources.?limits[?"memory"].hasValue())
  - name: qos
    expression: >-
      variables.noResources ? "BestEffort"
      : variables.podLevel
      ? (variables.podSums[0] != 0.0 && variables.podSums[1] != 0.0
         && (variables.podSums[2] == 0.0 || variables.podSums[2] == variables.podSums[0])
         && (variables.podSums[3] == 0.0 || variables.podSums[3] == variables.podSums[1])
         ? "Guaranteed" : "Burstable")
      : variables.sums.all(s, s == 0.0) ? "BestEffort"
      : variables.everyLimited
        && (variables.sums[0] == 0.0 || (variables.sums[0] - variables.sums[2] < 1e-9 && variables.sums[2] - variables.sums[0] < 1e-9))
        && (variables.sums[1] == 0.0 || (variables.sums[1] - variables.sums[3] < 1e-9 && variables.sums[3] - variables.sums[1] < 1e-9))
      ? "Guaranteed" : "Burstable"
{{- end }}

{{- /* CEL (a list of JSONPatch) editing the annotations of a decided pod: reaper.dev/injected
  when it differs, reaper.dev/version when the pod carries none, and reaper.dev/policy removed (no
  ReaperPolicy governs what a policy decides; see docs/engines.md). JSONPatch and Object types
  exist only in mutation expressions, not in variables: this is included into each mutation. */}}
{{- define "reaper.admission.annotationPatch" -}}
!has(object.metadata.annotations)
? [JSONPatch{op: "add", path: "/metadata/annotations", value: variables.protects
    ? {"reaper.dev/injected": variables.injected, "reaper.dev/version": {{ .Chart.AppVersion | quote }}}
    : {"reaper.dev/injected": variables.injected}}]
: (object.metadata.annotations[?"reaper.dev/injected"].orValue("") != variables.injected
    ? [JSONPatch{op: "add", path: "/metadata/annotations/reaper.dev~1injected", value: variables.injected}] : [])
  + (variables.protects && !("reaper.dev/version" in object.metadata.annotations)
    ? [JSONPatch{op: "add", path: "/metadata/annotations/reaper.dev~1version", value: {{ .Chart.AppVersion | quote }}}] : [])
  + (variables.protects && "reaper.dev/policy" in object.metadata.annotations
    ? [JSONPatch{op: "remove", path: "/metadata/annotations/reaper.dev~1policy"}] : [])
{{- end }}

{{- /* CEL: the emptyDir the reaper is copied into (install::volume). */}}
{{- define "reaper.admission.volume" -}}
Object.spec.volumes{name: variables.volumeNames[0],
  emptyDir: Object.spec.volumes.emptyDir{sizeLimit: {{ .Values.webhook.volumeSizeLimit | toString | quote }}}}
{{- end }}

{{- /* CEL: the image volume holding the reaper (install::image_volume), mode image. */}}
{{- define "reaper.admission.imageVolume" -}}
Object.spec.volumes{name: variables.volumeNames[0],
  image: Object.spec.volumes.image{
    reference: {{ include "reaper.image" (list . .Values.image.reaper) | quote }}, pullPolicy: "IfNotPresent"}}
{{- end }}

{{- /* CEL: the reaper-install init container (install::container), which copies the reaper into
  the volume. Its second mount hides the API token path, so the ServiceAccount plugin gives the
  installer no token. Its resources keep the pod's QoS class (variables.qos). */}}
{{- define "reaper.admission.installContainer" -}}
{{- $mount := .Values.webhook.mountPath }}
{{- $reaper := include "reaper.admission.reaperPath" . }}
{{- $install := .Values.webhook.install }}
Object.spec.initContainers{
  name: variables.installNames[0],
  image: {{ include "reaper.image" (list . .Values.image.reaper) | quote }},
  command: ["/reaper", "--install", {{ $reaper | quote }}],
  volumeMounts: [
    Object.spec.initContainers.volumeMounts{name: variables.volumeNames[0], mountPath: {{ $mount | quote }}}
    {{- if ne $mount "/var/run/secrets/kubernetes.io/serviceaccount" }},
    Object.spec.initContainers.volumeMounts{name: variables.volumeNames[0], mountPath: "/var/run/secrets/kubernetes.io/serviceaccount", readOnly: true}
{{- end }}
  ],
  resources: variables.qos == "BestEffort"
    ? Object.spec.initContainers.resources{}
    : Object.spec.initContainers.resources{
        requests: variables.qos == "Guaranteed"
          ? {"cpu": {{ $install.resources.limits.cpu | toString | quote }}, "memory": {{ $install.resources.limits.memory | toString | quote }}}
          : {"cpu": {{ $install.resources.requests.cpu | toString | quote }}, "memory": {{ $install.resources.requests.memory | toString | quote }}},
        limits: {"cpu": {{ $install.resources.limits.cpu | toString | quote }}, "memory": {{ $install.resources.limits.memory | toString | quote }}}},
  securityContext: Object.spec.initContainers.securityContext{
    runAsNonRoot: true,
    {{- if not (kindIs "invalid" $install.runAsUser) }}
    runAsUser: {{ int64 $install.runAsUser }},
    runAsGroup: {{ int64 $install.runAsUser }},
    {{- end }}
    allowPrivilegeEscalation: false,
    privileged: false,
    readOnlyRootFilesystem: true,
    capabilities: Object.spec.initContainers.securityContext.capabilities{drop: ["ALL"]},
    seccompProfile: Object.spec.initContainers.securityContext.seccompProfile{type: "RuntimeDefault"}},
  terminationMessagePolicy: "FallbackToLogsOnError"}
{{- end }}

{{- /* CEL for the webhook registration of engine both: whether the pod, as the policies left it,
  still needs the webhook: when a target container (a native sidecar or
  a regular container, within reaper.dev/containers) has no command (a registry lookup) or runs
  neither the reaper nor a known init: the policies wrap every container they can, so such a
  container is one they left (a mount at the mount path, a pod wrapped by an earlier pass and
  given a new container). A pod the policies wrapped or skipped is not sent; one they shared
  usually is, and the webhook leaves it as it is. */}}
{{- define "reaper.admission.leftToWebhook" -}}
{{- $reaper := include "reaper.admission.reaperPath" . }}
(object.spec.?initContainers.orValue([]).filter(c, c.?restartPolicy.orValue("") == "Always") + object.spec.containers)
  .exists(c,
    (!object.metadata.?annotations[?"reaper.dev/containers"].hasValue()
      || c.name in object.metadata.annotations["reaper.dev/containers"].split(",").map(n, n.trim()))
    && (size(c.?command.orValue([])) == 0
      || (c.command[0] != {{ $reaper | quote }}
        && !(c.command[0].substring(c.command[0].lastIndexOf("/") + 1)
               in ["tini", "dumb-init", "catatonit", "reaper", "docker-init", "init", "systemd", "s6-svscan", "my_init"]
             || c.command[0].substring(c.command[0].lastIndexOf("/") + 1).startsWith("tini-")))))
{{- end }}
