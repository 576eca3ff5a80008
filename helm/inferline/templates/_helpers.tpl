{{/*
Helpers shared by every template. Naming follows the Helm starter chart; the
component helpers exist so that every workload gets the same labels, security
contexts, spread constraints and image rules without copy-paste drift.
*/}}

{{- define "inferline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "inferline.fullname" -}}
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

{{- define "inferline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "router") */}}
{{- define "inferline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inferline.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .pool }}
inferline.io/pool: {{ . }}
{{- end }}
{{- end -}}

{{/* All labels of one component: selector labels + chart bookkeeping. */}}
{{- define "inferline.labels" -}}
{{ include "inferline.selectorLabels" . }}
helm.sh/chart: {{ include "inferline.chart" .ctx }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: inferline
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Image reference: (dict "ctx" $ "image" .Values.images.router). A digest wins over
the tag; an empty or `latest` tag fails the render (pinned images only).
*/}}
{{- define "inferline.image" -}}
{{- $img := .image -}}
{{- $registry := default $img.registry .ctx.Values.global.imageRegistry -}}
{{- $repo := ternary (printf "%s/%s" $registry $img.repository) $img.repository (ne $registry "") -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- if or (not $img.tag) (eq (toString $img.tag) "latest") -}}
{{- fail (printf "image %s: pin a tag or digest (got %q)" $img.repository (toString $img.tag)) -}}
{{- end -}}
{{- printf "%s:%s" $repo (toString $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "inferline.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod security context: (dict "ctx" $ "user" 10001) */}}
{{- define "inferline.podSecurityContext" -}}
{{- $sc := deepCopy .ctx.Values.securityContext.pod -}}
{{- $_ := set $sc "runAsUser" .user -}}
{{- $_ := set $sc "runAsGroup" .user -}}
{{- $_ := set $sc "fsGroup" .user -}}
{{- toYaml $sc -}}
{{- end -}}

{{/* Container security context: (dict "ctx" $ "user" 10001) */}}
{{- define "inferline.containerSecurityContext" -}}
{{- $sc := deepCopy .ctx.Values.securityContext.container -}}
{{- $_ := set $sc "runAsUser" .user -}}
{{- $_ := set $sc "runAsGroup" .user -}}
{{- toYaml $sc -}}
{{- end -}}

{{/* Zone and node spread: (dict "ctx" $ "component" "router" "pool" "") */}}
{{- define "inferline.topologySpread" -}}
{{- $ts := .ctx.Values.topologySpread -}}
{{- if $ts.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ $ts.zone.maxSkew }}
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: {{ $ts.zone.whenUnsatisfiable }}
    matchLabelKeys: [pod-template-hash]
    labelSelector:
      matchLabels:
        {{- include "inferline.selectorLabels" . | nindent 8 }}
  - maxSkew: {{ $ts.node.maxSkew }}
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ $ts.node.whenUnsatisfiable }}
    matchLabelKeys: [pod-template-hash]
    labelSelector:
      matchLabels:
        {{- include "inferline.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* Scheduling knobs of one component's values: (dict "v" .Values.router) */}}
{{- define "inferline.scheduling" -}}
{{- with .v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "inferline.serviceAccountName" -}}
{{- printf "%s-%s" (include "inferline.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Writable scratch space: the root filesystem is read-only everywhere. */}}
{{- define "inferline.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* --------------------------------------------------------------- router */}}

{{- define "inferline.router.fullname" -}}
{{- printf "%s-router" (include "inferline.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* host:port of the Feast online store (external URL, or the subchart's master). */}}
{{- define "inferline.redis.address" -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s-redis-master:6379" .Release.Name -}}
{{- else -}}
{{- required "redis.url is required when the redis subchart is disabled" .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{- define "inferline.redis.clusterMode" -}}
{{- and .Values.redis.clusterMode (not .Values.redis.enabled) -}}
{{- end -}}

{{- define "inferline.redis.passwordSecret" -}}
{{- if .Values.redis.existingSecret -}}
{{- .Values.redis.existingSecret -}}
{{- else if and .Values.redis.enabled .Values.redis.auth.enabled -}}
{{- printf "%s-redis" .Release.Name -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- triton */}}

{{/*
Every Triton pool this release runs, as a YAML list: the shared CPU pool
("default" in the router's routing table), the GPU pool, and one pool per
dedicatedPools entry (its own Deployment and Service, for hard isolation).
Each dedicated entry is merged over the pool of its `kind`.
*/}}
{{- define "inferline.triton.pools" -}}
{{- $pools := list -}}
{{- if .Values.triton.cpu.enabled -}}
{{- $pools = append $pools (dict "name" "cpu" "routingName" "default" "kind" "cpu" "spec" .Values.triton.cpu "dedicated" false) -}}
{{- end -}}
{{- if .Values.triton.gpu.enabled -}}
{{- $pools = append $pools (dict "name" "gpu" "routingName" "gpu" "kind" "gpu" "spec" .Values.triton.gpu "dedicated" false) -}}
{{- end -}}
{{- range .Values.dedicatedPools -}}
{{- if or (eq .name "cpu") (eq .name "gpu") (eq .name "default") -}}
{{- fail (printf "dedicatedPools: name %q is reserved" .name) -}}
{{- end -}}
{{- $base := deepCopy (ternary $.Values.triton.gpu $.Values.triton.cpu (eq .kind "gpu")) -}}
{{- $_ := unset $base "enabled" -}}
{{- $spec := mergeOverwrite $base (omit . "name" "kind" "tenants") -}}
{{- $pools = append $pools (dict "name" .name "routingName" .name "kind" .kind "spec" $spec "dedicated" true "tenants" .tenants) -}}
{{- end -}}
{{- toYaml $pools -}}
{{- end -}}

{{- define "inferline.triton.fullname" -}}
{{- printf "%s-triton-%s" (include "inferline.fullname" .ctx) .pool | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The router's routing table: values + a `pools` map built from the pools above. */}}
{{- define "inferline.routing.table" -}}
{{- $pools := dict -}}
{{- range (include "inferline.triton.pools" . | fromYamlArray) -}}
{{- if ne .routingName "default" -}}
{{- $svc := include "inferline.triton.fullname" (dict "ctx" $ "pool" .name) -}}
{{- $_ := set $pools .routingName (dict "grpc" (printf "%s:%v" $svc $.Values.triton.ports.grpc) "http" (printf "%s:%v" $svc $.Values.triton.ports.http)) -}}
{{- end -}}
{{- end -}}
{{- range $name, $p := .Values.routing.extraPools -}}
{{- $_ := set $pools $name $p -}}
{{- end -}}
{{- range $tenant, $t := .Values.routing.tenants -}}
{{- $pool := default "default" $t.pool -}}
{{- if and (ne $pool "default") (not (hasKey $pools $pool)) -}}
{{- fail (printf "routing.tenants.%s.pool %q: no such Triton pool (dedicatedPools, triton.gpu or routing.extraPools)" $tenant $pool) -}}
{{- end -}}
{{- if and (eq (default "shared" $t.isolation) "dedicated") (eq $pool "default") -}}
{{- fail (printf "routing.tenants.%s: isolation dedicated needs its own pool" $tenant) -}}
{{- end -}}
{{- end -}}
{{- $dedicated := dict -}}
{{- range .Values.dedicatedPools -}}
{{- $_ := set $dedicated .name true -}}
{{- $pool := .name -}}
{{- range .tenants -}}
{{- $t := index $.Values.routing.tenants . | default dict -}}
{{- if or (ne (default "default" $t.pool) $pool) (ne (default "shared" $t.isolation) "dedicated") -}}
{{- fail (printf "dedicatedPools %s lists tenant %q: routing.tenants.%s needs isolation: dedicated and pool: %s" $pool . . $pool) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $tenant, $t := .Values.routing.tenants -}}
{{- if and (eq (default "shared" $t.isolation) "dedicated") (not (hasKey $dedicated (default "default" $t.pool))) -}}
{{- fail (printf "routing.tenants.%s: isolation dedicated needs a pool from dedicatedPools (got %q)" $tenant (default "default" $t.pool)) -}}
{{- end -}}
{{- end -}}
{{- $table := dict "version" .Values.routing.version "models" .Values.routing.models "tenants" .Values.routing.tenants -}}
{{- if $pools -}}
{{- $_ := set $table "pools" $pools -}}
{{- end -}}
{{- toYaml $table -}}
{{- end -}}

{{/* ------------------------------------------------------------------ edge */}}

{{- define "inferline.edge.fullname" -}}
{{- printf "%s-edge" (include "inferline.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "inferline.ratelimit.fullname" -}}
{{- printf "%s-ratelimit" (include "inferline.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Checksum of the names of the Secrets a pod mounts: switching one rolls the pods
(content rotation needs a reloader: see README "Certificates"). */}}
{{- define "inferline.secretRefsChecksum" -}}
{{- toJson . | sha256sum -}}
{{- end -}}

{{/* ------------------------------------------------------- model artifacts */}}

{{/*
Artifacts volume and, for source=objectStore, the init container that fills it:
(dict "ctx" $ "user" 10001 "include" (list of rclone filters)). The router copies only what
it reads (version metadata, the Feast registry); Triton pools copy the models.
*/}}
{{- define "inferline.artifacts.volume" -}}
{{- $mr := .ctx.Values.modelRepository -}}
- name: artifacts
{{- if eq $mr.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ required "modelRepository.pvc.claimName is required when source=pvc" $mr.pvc.claimName }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ $mr.objectStore.sizeLimit }}
{{- end }}
{{- end -}}

{{- define "inferline.artifacts.initContainer" -}}
{{- $mr := .ctx.Values.modelRepository -}}
{{- if eq $mr.source "objectStore" }}
- name: model-sync
  image: {{ include "inferline.image" (dict "ctx" .ctx "image" .ctx.Values.images.modelSync) }}
  imagePullPolicy: {{ .ctx.Values.images.modelSync.pullPolicy }}
  args:
    - copy
    - {{ $mr.objectStore.uri | quote }}
    - {{ $mr.mountPath | quote }}
    - --config=/dev/null
    - --cache-dir=/tmp/rclone
    {{- range .include }}
    - --include={{ . }}
    {{- end }}
    {{- range $mr.objectStore.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  {{- with $mr.objectStore.credentialsSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  resources:
    {{- toYaml $mr.objectStore.resources | nindent 4 }}
  securityContext:
    {{- include "inferline.containerSecurityContext" (dict "ctx" .ctx "user" .user) | nindent 4 }}
  volumeMounts:
    - {name: artifacts, mountPath: {{ $mr.mountPath }}}
    - {name: tmp, mountPath: /tmp}
{{- end }}
{{- end -}}

{{- define "inferline.artifacts.mount" -}}
- name: artifacts
  mountPath: {{ .Values.modelRepository.mountPath }}
  readOnly: true
{{- end -}}

{{/*
Environment for a container's memory allocator (scripts/allocator.py is the same
table for the development stack). Usage: include "inferline.allocatorEnv"
(dict "mode" $r.allocator "jemalloc" .Values.jemallocPath). jemalloc: preloaded
with transparent huge pages, Python allocating through it; the glibc tunable keeps
huge pages if the image lacks the library (the loader then only warns).
*/}}
{{- define "inferline.allocatorEnv" -}}
{{- if eq .mode "jemalloc" }}
- {name: LD_PRELOAD, value: {{ .jemalloc | quote }}}
- {name: MALLOC_CONF, value: "thp:always,metadata_thp:always"}
- {name: PYTHONMALLOC, value: "malloc"}
- {name: GLIBC_TUNABLES, value: "glibc.malloc.hugetlb=1"}
{{- else if eq .mode "hugepages" }}
- {name: GLIBC_TUNABLES, value: "glibc.malloc.hugetlb=1"}
{{- end }}
{{- end -}}
