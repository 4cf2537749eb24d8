"""The dead-letter topic: messages the processor cannot store under their own ids.

``processor.policy`` decides which messages are dead letters (undecodable, malformed,
unknown election); ``DeadLetters.send`` produces them with their reason and source
position and waits for the broker's confirmation. The store calls it last inside the
batch's transaction, so a message is never committed without its dead letter: if the
topic does not confirm, ``DeadLetterError`` rolls the batch back and it is retried.
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import KafkaError, Producer
from confluent_kafka import Message as KafkaMessage

from processor import metrics
from processor.policy import DeadLetter


class DeadLetterError(RuntimeError):
    """The dead-letter topic did not confirm; the batch is retried."""


class DeadLetters:
    """One member's dead-letter producer, created at its first dead letter.

    ``source_topic`` names where the messages came from (header ``source``:
    ``<topic>:<partition>:<offset>``); ``client_config``: the cluster's TLS/SASL
    properties (``core.kafka_security``).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        source_topic: str,
        client_config: Mapping[str, str] | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._client_config = dict(client_config or {})
        self.topic = topic
        self.source_topic = source_topic
        self._producer: Producer | None = None

    def send(self, letters: list[DeadLetter], timeout_s: float = 10.0) -> None:
        """Produce ``letters`` and wait until the broker has them all; raises
        DeadLetterError when any is not confirmed within ``timeout_s``."""
        if not letters:
            return
        if self._producer is None:
            self._producer = Producer(
                {
                    "bootstrap.servers": self._bootstrap,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    **self._client_config,
                }
            )
        errors: list[str] = []

        def delivered(err: KafkaError | None, _msg: KafkaMessage) -> None:
            if err is not None:
                errors.append(str(err))

        for d in letters:
            self._producer.produce(
                self.topic,
                value=d.msg.value,
                key=d.msg.key,
                headers=[
                    ("reason", d.reason.encode()),
                    ("detail", d.detail.encode()),
                    ("source", f"{self.source_topic}:{d.msg.partition}:{d.msg.offset}".encode()),
                ],
                on_delivery=delivered,
            )
        left = self._producer.flush(timeout_s)
        if left or errors:
            raise DeadLetterError(f"dead letters not confirmed: {left} pending, {errors[:3]}")
        metrics.DEAD_LETTERS.inc(len(letters))

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
