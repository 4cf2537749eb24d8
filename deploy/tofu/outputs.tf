output "topic" {
  description = "The votes topic."
  value       = kafka_topic.votes.name
}

output "dlq_topic" {
  description = "The dead-letter topic."
  value       = kafka_topic.dlq.name
}

output "partitions" {
  description = "Partitions of the votes topic."
  value       = kafka_topic.votes.partitions
}

output "release_name" {
  description = "Helm release name."
  value       = helm_release.vote.name
}

output "namespace" {
  description = "Namespace of the release."
  value       = helm_release.vote.namespace
}

output "gateway_service" {
  description = "In-cluster address of the gateway's HTTP Service."
  value       = "${local.fullname}-gateway.${helm_release.vote.namespace}.svc"
}
