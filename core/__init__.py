"""Pieces shared by the gateway and the processor: settings loading and the Kafka event schema."""
