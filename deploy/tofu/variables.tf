variable "namespace" {
  description = "Kubernetes namespace of the release."
  type        = string
  default     = "vote"
}

variable "create_namespace" {
  description = "Create the namespace if it does not exist."
  type        = bool
  default     = true
}

variable "release_name" {
  description = "Helm release name."
  type        = string
  default     = "vote"
}

variable "image_repository" {
  description = "Image built from the repository's Dockerfile."
  type        = string
}

variable "image_tag" {
  description = "Image tag; empty means the chart's appVersion."
  type        = string
  default     = ""
}

variable "kafka_bootstrap" {
  description = "Bootstrap servers as the gateway and the processor reach them (VOTE_KAFKA_BOOTSTRAP)."
  type        = string
}

variable "kafka_security_protocol" {
  description = "How the gateway and the processor reach the brokers (VOTE_KAFKA_SECURITY_PROTOCOL): plaintext, ssl, sasl_plaintext or sasl_ssl. Production: sasl_ssl, or ssl with client certificates."
  type        = string
  default     = "plaintext"

  validation {
    condition     = contains(["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"], var.kafka_security_protocol)
    error_message = "kafka_security_protocol must be plaintext, ssl, sasl_plaintext or sasl_ssl."
  }
}

variable "kafka_sasl_mechanism" {
  description = "SASL mechanism with sasl_* protocols: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN."
  type        = string
  default     = "SCRAM-SHA-512"

  validation {
    condition     = contains(["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"], var.kafka_sasl_mechanism)
    error_message = "kafka_sasl_mechanism must be SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN."
  }
}

variable "kafka_sasl_username" {
  description = "SASL user of the gateway and the processor."
  type        = string
  default     = ""
}

variable "kafka_sasl_password" {
  description = "SASL password; the chart keeps it in a Secret mounted as a file. Leave empty when kafka_sasl_existing_secret names one."
  type        = string
  default     = ""
  sensitive   = true
}

variable "kafka_sasl_existing_secret" {
  description = "Name of a Secret whose key `password` holds the SASL password (instead of kafka_sasl_password)."
  type        = string
  default     = ""
}

variable "kafka_tls_existing_secret" {
  description = "Name of a Secret with ca.crt (and tls.crt, tls.key for mutual TLS) for ssl and sasl_ssl; empty: the image's CA bundle."
  type        = string
  default     = ""
}

variable "kafka_tls_client_certificate" {
  description = "Authenticate with the client certificate in kafka_tls_existing_secret (mutual TLS)."
  type        = bool
  default     = false
}

variable "topic" {
  description = "The votes topic (docs/ARCHITECTURE.md, Event schema)."
  type        = string
  default     = "votes.v1"
}

variable "dlq_topic" {
  description = "Dead-letter topic of messages the processor cannot decode."
  type        = string
  default     = "votes.v1.dlq"
}

variable "partitions" {
  description = "Partitions of the votes topic; the upper bound of processor replicas. Kafka can add partitions but never remove them, and adding them moves voters between partitions (key = voter id)."
  type        = number
  default     = 48

  validation {
    condition     = var.partitions >= 1
    error_message = "partitions must be at least 1."
  }
}

variable "replication_factor" {
  description = "Replication factor of both topics."
  type        = number
  default     = 3
}

variable "min_insync_replicas" {
  description = "min.insync.replicas: with acks=all, a write survives the loss of replication_factor - min_insync_replicas brokers."
  type        = number
  default     = 2

  validation {
    condition     = var.min_insync_replicas >= 1
    error_message = "min_insync_replicas must be at least 1."
  }
}

variable "retention_ms" {
  description = "Retention of votes.v1 in ms (processor verify re-reads the topic from the start; keep it for the whole election and its audit)."
  type        = number
  default     = 2592000000 # 30 days
}

variable "processor_replicas" {
  description = "Processor pods; at most partitions."
  type        = number
  default     = 12
}

variable "gateway_min_replicas" {
  description = "Gateway HPA minimum."
  type        = number
  default     = 3
}

variable "gateway_max_replicas" {
  description = "Gateway HPA maximum."
  type        = number
  default     = 60
}

variable "trusted_proxies" {
  description = "CIDRs of the ingress or load balancer in front of the gateways, whose Forwarded / X-Forwarded-For name the client (VOTE_TRUSTED_PROXIES). Empty: every voter behind the ingress shares its address and rate-limit budget."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.trusted_proxies : can(cidrhost(c, 0))])
    error_message = "trusted_proxies must be CIDRs such as 10.0.0.0/8 or fd00::/8."
  }
}

variable "existing_env_secret" {
  description = "Name of a Secret with VOTE_PG_DSN and VOTE_REDIS_URL; when empty, pg_dsn and redis_url are used."
  type        = string
  default     = ""
}

variable "existing_keys_secret" {
  description = "Name of a Secret with jwks.json, receipt.key and event_keys.json; when empty, jwks, receipt_key_base64 and event_keys are used."
  type        = string
  default     = ""
}

variable "pg_dsn" {
  description = "PostgreSQL DSN (VOTE_PG_DSN)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "redis_url" {
  description = "Redis URL (VOTE_REDIS_URL)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "jwks" {
  description = "JWKS JSON of the identity service's verification keys."
  type        = string
  default     = ""
  sensitive   = true
}

variable "receipt_key_base64" {
  description = "Base64 of the receipt-signing secret."
  type        = string
  default     = ""
  sensitive   = true
}

variable "event_keys" {
  description = "The event keys (event_keys.json of gateway.admin init-keys): gateways sign events, processors verify them."
  type        = string
  default     = ""
  sensitive   = true
}

variable "service_monitor" {
  description = "Create ServiceMonitors (needs the Prometheus Operator CRDs)."
  type        = bool
  default     = false
}

variable "extra_values" {
  description = "Further chart values as YAML documents, merged after the module's own."
  type        = list(string)
  default     = []
}

# -- Regions (deploy/README.md, "Two regions"): one module instance per region. -----------

variable "region_name" {
  description = "This region's Kafka cluster as MirrorMaker 2 names it (A: its topic is A.votes.v1 elsewhere); empty for one region."
  type        = string
  default     = ""
}

variable "takeover_regions" {
  description = "Regions whose mirrored topic this region's processors count while those regions are lost."
  type        = list(string)
  default     = []
}

variable "mirror_sources" {
  description = "MirrorMaker 2 in this region copies votes.v1 from these regions: name -> their Kafka bootstrap servers. Empty: no MirrorMaker here."
  type        = map(string)
  default     = {}
}

variable "mirror_image" {
  description = "Image with Apache Kafka's connect-mirror-maker.sh."
  type        = string
  default     = "apache/kafka:4.3.1"
}

variable "mirror_replicas" {
  description = "MirrorMaker 2 workers of this region (dedicated mode shares tasks between them)."
  type        = number
  default     = 1
}

variable "pg_nodes" {
  description = "host:port of every node of the PostgreSQL HA formation (pg_auto_failover). With pg_password, the module builds VOTE_PG_DSN as a multi-host DSN with target_session_attrs=read-write (instead of pg_dsn)."
  type        = list(string)
  default     = []
}

variable "pg_user" {
  description = "PostgreSQL role of the services, for the DSN built from pg_nodes."
  type        = string
  default     = "vote"
}

variable "pg_database" {
  description = "PostgreSQL database, for the DSN built from pg_nodes."
  type        = string
  default     = "vote"
}

variable "pg_password" {
  description = "Password of pg_user, for the DSN built from pg_nodes."
  type        = string
  default     = ""
  sensitive   = true
}

variable "pg_connect_timeout_s" {
  description = "libpq connect_timeout per node: how long a connection attempt waits for a dead node before trying the next."
  type        = number
  default     = 3
}

variable "run_migrations" {
  description = "Run the schema migration hook; exactly one region's release should."
  type        = bool
  default     = true
}
