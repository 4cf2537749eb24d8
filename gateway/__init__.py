"""The HTTP gateway: takes votes, makes them durable (Kafka or the local spill), answers fast."""
