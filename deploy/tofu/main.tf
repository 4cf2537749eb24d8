# Kafka topics of the platform and the Helm release of deploy/helm/vote-platform.

locals {
  chart_path = "${path.module}/../helm/vote-platform"
  # Every node of the HA formation in one DSN: libpq tries them in turn and keeps the one
  # that accepts writes, so the services follow a failover without a restart.
  pg_dsn = (length(var.pg_nodes) > 0 && var.pg_password != "") ? format(
    "postgresql://%s:%s@%s/%s?target_session_attrs=read-write&connect_timeout=%d",
    var.pg_user, urlencode(var.pg_password), join(",", var.pg_nodes), var.pg_database,
    var.pg_connect_timeout_s,
  ) : var.pg_dsn
  # The chart's "vote.fullname": the release name if it contains the chart name, else both.
  fullname = strcontains(var.release_name, "vote-platform") ? var.release_name : "${var.release_name}-vote-platform"
}

resource "kafka_topic" "votes" {
  name               = var.topic
  partitions         = var.partitions
  replication_factor = var.replication_factor

  config = {
    "min.insync.replicas"            = tostring(var.min_insync_replicas)
    "retention.ms"                   = tostring(var.retention_ms)
    "cleanup.policy"                 = "delete"
    "compression.type"               = "producer"
    "unclean.leader.election.enable" = "false"
  }

  lifecycle {
    # Fewer partitions is impossible in Kafka; more would move voters between partitions.
    prevent_destroy = true
  }
}

resource "kafka_topic" "dlq" {
  name               = var.dlq_topic
  partitions         = 6
  replication_factor = var.replication_factor

  config = {
    "min.insync.replicas"            = tostring(var.min_insync_replicas)
    "retention.ms"                   = tostring(var.retention_ms)
    "cleanup.policy"                 = "delete"
    "unclean.leader.election.enable" = "false"
  }
}

resource "helm_release" "vote" {
  name             = var.release_name
  namespace        = var.namespace
  create_namespace = var.create_namespace
  chart            = local.chart_path

  # The migrate Job is a pre-install/pre-upgrade hook; wait for it and for the pods.
  wait    = true
  timeout = 900

  values = concat([
    yamlencode({
      image = {
        repository = var.image_repository
        tag        = var.image_tag
      }
      kafka = {
        bootstrap  = var.kafka_bootstrap
        topic      = kafka_topic.votes.name
        dlqTopic   = kafka_topic.dlq.name
        partitions = kafka_topic.votes.partitions

        securityProtocol = var.kafka_security_protocol
        sasl = {
          mechanism      = var.kafka_sasl_mechanism
          username       = var.kafka_sasl_username
          existingSecret = var.kafka_sasl_existing_secret
        }
        tls = {
          existingSecret    = var.kafka_tls_existing_secret
          clientCertificate = var.kafka_tls_client_certificate
        }
      }
      gateway = {
        autoscaling = {
          enabled     = true
          minReplicas = var.gateway_min_replicas
          maxReplicas = var.gateway_max_replicas
        }
        trustedProxies = var.trusted_proxies
      }
      processor = {
        replicas = var.processor_replicas
      }
      secrets = {
        existingEnvSecret  = var.existing_env_secret
        existingKeysSecret = var.existing_keys_secret
      }
      serviceMonitor = {
        enabled = var.service_monitor
      }
      region = {
        name     = var.region_name
        takeover = var.takeover_regions
      }
      mirror = {
        enabled  = length(var.mirror_sources) > 0
        sources  = var.mirror_sources
        image    = var.mirror_image
        replicas = var.mirror_replicas
      }
      migrate = {
        enabled = var.run_migrations
      }
    }),
  ], var.extra_values)

  # Secrets go through set_sensitive so that they stay out of plans and logs.
  set_sensitive = [
    { name = "secrets.pgDsn", value = local.pg_dsn },
    { name = "secrets.redisUrl", value = var.redis_url },
    { name = "secrets.jwks", value = var.jwks },
    { name = "secrets.receiptKeyBase64", value = var.receipt_key_base64 },
    { name = "secrets.eventKeys", value = var.event_keys },
    { name = "kafka.sasl.password", value = var.kafka_sasl_password },
  ]

  lifecycle {
    precondition {
      condition     = var.processor_replicas <= var.partitions
      error_message = "processor_replicas must not exceed partitions (idle consumers)."
    }
    precondition {
      condition     = length(var.mirror_sources) == 0 || var.region_name != ""
      error_message = "mirror_sources needs region_name (the cluster MirrorMaker copies into)."
    }
    precondition {
      condition     = var.min_insync_replicas <= var.replication_factor
      error_message = "min_insync_replicas must not exceed replication_factor."
    }
    precondition {
      condition = !startswith(var.kafka_security_protocol, "sasl_") || (
        var.kafka_sasl_username != "" && (var.kafka_sasl_password != "" || var.kafka_sasl_existing_secret != "")
      )
      error_message = "sasl_* protocols need kafka_sasl_username and kafka_sasl_password or kafka_sasl_existing_secret."
    }
  }
}
