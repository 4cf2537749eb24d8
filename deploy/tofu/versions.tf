terraform {
  required_version = ">= 1.6.0"

  required_providers {
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.0"
    }
    kafka = {
      source  = "Mongey/kafka"
      version = "~> 0.12"
    }
  }
}

# The caller configures both providers (Kubernetes credentials for helm; bootstrap
# servers, TLS/SASL for kafka), e.g.:
#
#   provider "helm" {
#     kubernetes = { config_path = "~/.kube/config" }
#   }
#   provider "kafka" {
#     bootstrap_servers = ["kafka-0.example:9093"]
#     tls_enabled       = true
#   }
