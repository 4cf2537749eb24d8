{{/* Names, labels and shared snippets of the vote-platform chart. */}}

{{- define "vote.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vote.fullname" -}}
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

{{- define "vote.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vote.labels" -}}
helm.sh/chart: {{ include "vote.chart" . }}
app.kubernetes.io/name: {{ include "vote.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "vote.selectorLabels" (list . "gateway") */}}
{{- define "vote.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "vote.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "vote.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Secret with VOTE_PG_DSN and VOTE_REDIS_URL. */}}
{{- define "vote.envSecretName" -}}
{{- default (printf "%s-env" (include "vote.fullname" .)) .Values.secrets.existingEnvSecret -}}
{{- end -}}

{{/* Secret with jwks.json and receipt.key. */}}
{{- define "vote.keysSecretName" -}}
{{- default (printf "%s-keys" (include "vote.fullname" .)) .Values.secrets.existingKeysSecret -}}
{{- end -}}

{{- define "vote.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Secret with the Kafka SASL password (key: kafka.sasl.existingSecretKey). */}}
{{- define "vote.kafkaSaslSecretName" -}}
{{- default (printf "%s-kafka-sasl" (include "vote.fullname" .)) .Values.kafka.sasl.existingSecret -}}
{{- end -}}

{{- define "vote.kafkaSasl" -}}
{{- hasPrefix "sasl_" (lower .Values.kafka.securityProtocol) -}}
{{- end -}}

{{- define "vote.kafkaTls" -}}
{{- has (lower .Values.kafka.securityProtocol) (list "ssl" "sasl_ssl") -}}
{{- end -}}

{{/* The Kafka security settings (VOTE_KAFKA_SECURITY_PROTOCOL and the rest) of a ConfigMap, gateway and processor alike. */}}
{{- define "vote.kafkaSecurityEnv" -}}
{{- $k := .Values.kafka -}}
{{- if not (has (lower $k.securityProtocol) (list "plaintext" "ssl" "sasl_plaintext" "sasl_ssl")) }}
{{- fail (printf "kafka.securityProtocol must be plaintext, ssl, sasl_plaintext or sasl_ssl, not %q" $k.securityProtocol) }}
{{- end }}
VOTE_KAFKA_SECURITY_PROTOCOL: {{ lower $k.securityProtocol | quote }}
{{- if eq (include "vote.kafkaSasl" .) "true" }}
{{- if not (and $k.sasl.username (or $k.sasl.password $k.sasl.existingSecret)) }}
{{- fail "kafka.securityProtocol sasl_* needs kafka.sasl.username and kafka.sasl.password or kafka.sasl.existingSecret" }}
{{- end }}
VOTE_KAFKA_SASL_MECHANISM: {{ $k.sasl.mechanism | quote }}
VOTE_KAFKA_SASL_USERNAME: {{ $k.sasl.username | quote }}
VOTE_KAFKA_SASL_PASSWORD_FILE: /etc/vote/kafka-sasl/password
{{- end }}
{{- if eq (include "vote.kafkaTls" .) "true" }}
{{- if $k.tls.existingSecret }}
VOTE_KAFKA_SSL_CA_LOCATION: /etc/vote/kafka-tls/ca.crt
{{- end }}
{{- if $k.tls.clientCertificate }}
{{- if not $k.tls.existingSecret }}
{{- fail "kafka.tls.clientCertificate needs kafka.tls.existingSecret (with tls.crt and tls.key)" }}
{{- end }}
VOTE_KAFKA_SSL_CERTIFICATE_LOCATION: /etc/vote/kafka-tls/tls.crt
VOTE_KAFKA_SSL_KEY_LOCATION: /etc/vote/kafka-tls/tls.key
{{- end }}
VOTE_KAFKA_SSL_VERIFY_HOSTNAME: {{ $k.tls.verifyHostname | toString | quote }}
{{- end }}
{{- end -}}

{{/* Volumes with the Kafka credentials, for a pod spec's volumes list. */}}
{{- define "vote.kafkaSecurityVolumes" -}}
{{- if eq (include "vote.kafkaSasl" .) "true" }}
- name: kafka-sasl
  secret:
    secretName: {{ include "vote.kafkaSaslSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.kafka.sasl.existingSecretKey }}
        path: password
{{- end }}
{{- if and (eq (include "vote.kafkaTls" .) "true") .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* Their mounts, for a container's volumeMounts list. */}}
{{- define "vote.kafkaSecurityMounts" -}}
{{- if eq (include "vote.kafkaSasl" .) "true" }}
- name: kafka-sasl
  mountPath: /etc/vote/kafka-sasl
  readOnly: true
{{- end }}
{{- if and (eq (include "vote.kafkaTls" .) "true") .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/vote/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}
