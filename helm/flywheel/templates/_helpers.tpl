{{/*
Names. The release's objects are "<fullname>-<component>"; fullname is the release name when it
already contains the chart's name (the usual `helm install flywheel ./helm/flywheel`).
*/}}
{{- define "flywheel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flywheel.fullname" -}}
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

{{/* "<fullname>-<component>", cut to the 63 characters of a DNS label. Call with (list $ "gateway"). */}}
{{- define "flywheel.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "flywheel.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flywheel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The selector labels of one component: stable across upgrades (a selector is immutable). */}}
{{- define "flywheel.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "flywheel.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Every object's labels: the standard app.kubernetes.io set and commonLabels. */}}
{{- define "flywheel.labels" -}}
{{- $root := index . 0 -}}
{{ include "flywheel.selectorLabels" . }}
app.kubernetes.io/part-of: flywheel
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ include "flywheel.chart" $root }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
namespace, labels and annotations (commonAnnotations and the object's own) of an object.
Call with (list $ "component") or (list $ "component" (dict "annotation" "value")).
*/}}
{{- define "flywheel.metadata" -}}
{{- $root := index . 0 -}}
{{- $annotations := deepCopy ($root.Values.commonAnnotations | default dict) -}}
{{- if gt (len .) 2 -}}
{{- $annotations = merge (deepCopy (index . 2)) $annotations -}}
{{- end -}}
namespace: {{ $root.Release.Namespace }}
labels:
  {{- include "flywheel.labels" (list $root (index . 1)) | nindent 2 }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A Secret's value already in the cluster, decoded ("" if none): (list $ name key). */}}
{{- define "flywheel.existingSecretValue" -}}
{{- $root := index . 0 -}}
{{- $secret := lookup "v1" "Secret" $root.Release.Namespace (index . 1) -}}
{{- if and $secret $secret.data -}}
{{- index $secret.data (index . 2) | default "" | b64dec -}}
{{- end -}}
{{- end -}}

{{/*
An image reference. A digest pins the image and wins over the tag; the tag defaults to the chart's
appVersion. Call with (list $ .Values.x.image).
*/}}
{{- define "flywheel.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/* Names of the pull secrets of a pod, as a JSON list: the global ones and those of its images.
Call with (list $ image...). */}}
{{- define "flywheel.pullSecretNames" -}}
{{- $root := index . 0 -}}
{{- $lists := list $root.Values.global.imagePullSecrets -}}
{{- range $image := rest . -}}
{{- $lists = append $lists $image.pullSecrets -}}
{{- end -}}
{{- $names := list -}}
{{- range $secrets := $lists -}}
{{- range $secrets -}}
{{- /* A name, or {name: ...} as in a pod spec. */ -}}
{{- if kindIs "string" . -}}
{{- $names = append $names . -}}
{{- else -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $names | uniq | toJson -}}
{{- end -}}

{{/* imagePullSecrets of a pod: the global ones and those of its images. Call with (list $ image...). */}}
{{- define "flywheel.pullSecrets" -}}
{{- with (include "flywheel.pullSecretNames" . | fromJsonArray) }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* A probe's timing fields (the handler is the template's: it is the service's own endpoint). */}}
{{- define "flywheel.probeTiming" -}}
initialDelaySeconds: {{ .initialDelaySeconds }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
successThreshold: {{ .successThreshold }}
{{- end -}}

{{/* nodeSelector, tolerations, affinity and priorityClassName of a pod. Call with the component's values. */}}
{{- define "flywheel.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Settings as environment variables: (list "FLYWHEEL_ENGINE_" .Values.engine.settings). */}}
{{- define "flywheel.settingsEnv" -}}
{{- $prefix := index . 0 -}}
{{- range $name, $value := index . 1 }}
{{- $text := toString $value }}
{{- if or (kindIs "slice" $value) (kindIs "map" $value) }}
{{- /* Lists and maps as JSON, which pydantic-settings parses for list and dict fields. */}}
{{- $text = toJson $value }}
{{- else if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{- /* YAML numbers arrive as floats: 1000000 would print as 1e+06, which an int field refuses. */}}
{{- $text = int64 $value | toString }}
{{- end }}
- name: {{ printf "%s%s" $prefix (upper $name) }}
  value: {{ $text | quote }}
{{- end }}
{{- end -}}

{{/* The Secret and key holding the service credential. */}}
{{- define "flywheel.serviceTokenSecret" -}}
{{- default (include "flywheel.componentName" (list . "service-token")) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "flywheel.postgresqlSecret" -}}
{{- default (include "flywheel.componentName" (list . "postgresql")) .Values.postgresql.auth.existingSecret -}}
{{- end -}}

{{/*
The environment every Flywheel process shares: logging, Redis and the service credential.
Values that come from Secrets are read with secretKeyRef, never copied into the pod spec.
*/}}
{{- define "flywheel.commonEnv" -}}
- name: FLYWHEEL_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: FLYWHEEL_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{ include "flywheel.connectionEnv" . }}
{{- end -}}

{{/* Redis and the service credential (the trainer takes the rest from its settings Secret). */}}
{{- define "flywheel.connectionEnv" -}}
{{- if .Values.redis.enabled }}
- name: FLYWHEEL_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "flywheel.componentName" (list . "redis")) | quote }}
{{- else if .Values.externalRedis.existingSecret }}
- name: FLYWHEEL_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretKey }}
{{- else }}
- name: FLYWHEEL_REDIS_URL
  value: {{ required "externalRedis.url or externalRedis.existingSecret is required when redis.enabled is false" .Values.externalRedis.url | quote }}
{{- end }}
- name: FLYWHEEL_SERVICE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "flywheel.serviceTokenSecret" . }}
      key: {{ .Values.auth.existingSecretKey }}
{{- end -}}

{{/*
FLYWHEEL_<SERVICE>_DATABASE_URL of the feedback service or the trainer: (list $ "FEEDBACK").
With the release's PostgreSQL the URL is composed from the password Secret by Kubernetes'
$(VAR) expansion, so the password never appears in the pod spec; the generated password is
alphanumeric, hence safe in a URL.
*/}}
{{- define "flywheel.databaseEnv" -}}
{{- $root := index . 0 -}}
{{- $service := index . 1 -}}
{{- if $root.Values.postgresql.enabled }}
{{- $database := ternary $root.Values.postgresql.auth.feedbackDatabase $root.Values.postgresql.auth.trainerDatabase (eq $service "FEEDBACK") }}
- name: FLYWHEEL_POSTGRESQL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "flywheel.postgresqlSecret" $root }}
      key: {{ $root.Values.postgresql.auth.existingSecretKey }}
- name: FLYWHEEL_{{ $service }}_DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s:$(FLYWHEEL_POSTGRESQL_PASSWORD)@%s:5432/%s" $root.Values.postgresql.auth.username (include "flywheel.componentName" (list $root "postgresql")) $database | quote }}
{{- else if $root.Values.externalDatabase.existingSecret }}
- name: FLYWHEEL_{{ $service }}_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.externalDatabase.existingSecret }}
      key: {{ ternary $root.Values.externalDatabase.feedbackUrlKey $root.Values.externalDatabase.trainerUrlKey (eq $service "FEEDBACK") }}
{{- end }}
{{- end -}}

{{/* The model store volume (a pod's `volumes` entry). */}}
{{- define "flywheel.modelStoreVolume" -}}
- name: model-store
  persistentVolumeClaim:
    claimName: {{ include "flywheel.modelStoreClaim" . }}
{{- end -}}

{{- define "flywheel.modelStoreClaim" -}}
{{- default (include "flywheel.componentName" (list . "models")) .Values.persistence.existingClaim -}}
{{- end -}}

{{/*
Writable scratch space: the root filesystem is read-only, and Python, torch and Hugging Face
write caches under /tmp (the images point HOME, XDG_CACHE_HOME and HF_HOME there).
*/}}
{{- define "flywheel.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- end -}}

{{/* A memory-backed /dev/shm volume: (dict "enabled" .. "sizeLimit" ..). */}}
{{- define "flywheel.shmVolume" -}}
{{- if .enabled }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .sizeLimit }}
{{- end }}
{{- end -}}

{{/* Resources with the GPU limit added: (list resources gpu). */}}
{{- define "flywheel.resources" -}}
{{- $resources := deepCopy (index . 0 | default dict) -}}
{{- $gpu := index . 1 -}}
{{- if and $gpu $gpu.enabled -}}
{{- $limits := get $resources "limits" | default dict -}}
{{- $_ := set $limits $gpu.resourceName ($gpu.count | toString) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- with $resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Labels that open NetworkPolicies: who may reach Redis, PostgreSQL and the internal APIs. */}}
{{- define "flywheel.redisClientLabel" -}}
flywheel.dev/redis-client: "true"
{{- end -}}

{{- define "flywheel.postgresqlClientLabel" -}}
flywheel.dev/postgresql-client: "true"
{{- end -}}

{{/* Whether an image reference can change under the same name (a moving tag, no digest). */}}
{{- define "flywheel.mutableTag" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $tag := default $root.Chart.AppVersion $image.tag | toString -}}
{{- if and (not $image.digest) (has $tag (list "latest" "main" "master" "edge" "nightly" "dev" "stable")) -}}
true
{{- end -}}
{{- end -}}

{{- define "flywheel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "flywheel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The train worker's account: its own with the Job Role when the executor is kubernetes. */}}
{{- define "flywheel.trainerServiceAccountName" -}}
{{- if eq .Values.trainer.executor "kubernetes" -}}
{{- default (include "flywheel.componentName" (list . "trainer")) .Values.trainer.rbac.serviceAccountName -}}
{{- else -}}
{{- include "flywheel.serviceAccountName" . -}}
{{- end -}}
{{- end -}}

{{/*
The trainer's settings, shared by its three processes and by the stage Jobs of the Kubernetes
executor, which take their environment from a Secret only (FLYWHEEL_TRAINER_K8S_ENV_FROM_SECRET):
one Secret, so a stage always trains with the settings of its worker. Nothing secret is in it.
*/}}
{{- define "flywheel.trainerEnv" -}}
{{- $t := .Values.trainer -}}
FLYWHEEL_DATA_DIR: {{ .Values.persistence.mountPath | quote }}
FLYWHEEL_MODEL_STORE: {{ printf "%s/models" .Values.persistence.mountPath | quote }}
FLYWHEEL_LOG_LEVEL: {{ .Values.logLevel | quote }}
FLYWHEEL_LOG_FORMAT: {{ .Values.logFormat | quote }}
FLYWHEEL_TRAINER_EXECUTOR: {{ $t.executor | quote }}
FLYWHEEL_TRAINER_STAGE_TIME_LIMIT_S: {{ $t.stageTimeLimitSeconds | int64 | quote }}
FLYWHEEL_TRAINER_METRICS_HOST: "0.0.0.0"
FLYWHEEL_TRAINER_CONTROL_METRICS_PORT: "9053"
FLYWHEEL_TRAINER_TRAIN_METRICS_PORT: "9054"
FLYWHEEL_TRAINER_BEAT_METRICS_PORT: "9055"
FLYWHEEL_TRAINER_FEEDBACK_GRPC_TARGET: {{ printf "%s:%v" (include "flywheel.componentName" (list . "feedback")) .Values.feedback.service.grpcPort | quote }}
{{- if eq $t.executor "kubernetes" }}
FLYWHEEL_TRAINER_K8S_NAMESPACE: {{ .Release.Namespace | quote }}
FLYWHEEL_TRAINER_K8S_IMAGE: {{ include "flywheel.image" (list . $t.image) | quote }}
FLYWHEEL_TRAINER_K8S_IMAGE_PULL_POLICY: {{ $t.image.pullPolicy | quote }}
FLYWHEEL_TRAINER_K8S_IMAGE_PULL_SECRETS: {{ include "flywheel.pullSecretNames" (list . $t.image) | quote }}
FLYWHEEL_TRAINER_K8S_SERVICE_ACCOUNT: {{ include "flywheel.serviceAccountName" . | quote }}
FLYWHEEL_TRAINER_K8S_GPU_COUNT: {{ $t.kubernetes.gpuCount | quote }}
FLYWHEEL_TRAINER_K8S_GPU_RESOURCE: {{ $t.kubernetes.gpuResource | quote }}
FLYWHEEL_TRAINER_K8S_CPU_REQUEST: {{ $t.kubernetes.cpuRequest | quote }}
FLYWHEEL_TRAINER_K8S_MEMORY_REQUEST: {{ $t.kubernetes.memoryRequest | quote }}
FLYWHEEL_TRAINER_K8S_MEMORY_LIMIT: {{ $t.kubernetes.memoryLimit | quote }}
FLYWHEEL_TRAINER_K8S_NODE_SELECTOR: {{ $t.kubernetes.nodeSelector | toJson | quote }}
FLYWHEEL_TRAINER_K8S_TOLERATIONS: {{ $t.kubernetes.tolerations | toJson | quote }}
FLYWHEEL_TRAINER_K8S_MODEL_STORE_CLAIM: {{ include "flywheel.modelStoreClaim" . | quote }}
FLYWHEEL_TRAINER_K8S_MODEL_STORE_MOUNT: {{ .Values.persistence.mountPath | quote }}
FLYWHEEL_TRAINER_K8S_ENV_FROM_SECRET: {{ (include "flywheel.componentName" (list . "trainer-env")) | quote }}
FLYWHEEL_TRAINER_K8S_TTL_AFTER_FINISHED_S: {{ $t.kubernetes.ttlSecondsAfterFinished | int64 | quote }}
FLYWHEEL_TRAINER_K8S_STOP_GRACE_S: {{ $t.kubernetes.stopGraceSeconds | quote }}
{{- end }}
{{- if and (ne .Values.engine.backend "builtin") (not (hasKey $t.settings "canary_share")) }}
{{- /* vLLM and TGI serve the promoted policy only: no canary share (docs/deploy.md). */}}
FLYWHEEL_TRAINER_CANARY_SHARE: "0"
{{- end }}
{{- range (include "flywheel.settingsEnv" (list "FLYWHEEL_TRAINER_" $t.settings) | fromYamlArray) }}
{{ .name }}: {{ .value | quote }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy peers: the pods of components of this release, (list $ "gateway" ...). */}}
{{- define "flywheel.peers" -}}
{{- $root := index . 0 -}}
{{- range $component := rest . }}
- podSelector:
    matchLabels:
      {{- include "flywheel.selectorLabels" (list $root $component) | nindent 6 }}
{{- end }}
{{- end -}}
