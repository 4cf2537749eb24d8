"""Kafka → PostgreSQL vote processor (docs/ARCHITECTURE.md, Processor).

``python -m processor`` consumes ``votes.v1`` in batches and applies each batch in one
PostgreSQL transaction together with the partition offsets; ``migrate``, ``verify`` and
``rebuild-cache`` are the operator commands (see ``processor/README.md``).
"""
