"""``python -m bench chaos``: faults under load against a 3-node cluster, checked Jepsen-style.

One module per concept:

* ``cluster``   the chaos suite's own stack (3 Kafka nodes, PostgreSQL, Redis) and its servers
* ``client``    the patient voting client and the open-loop load
* ``faults``    what can be done to a server (kill, pause, restart, network toxics, disk full)
* ``scenarios`` each named scenario: which fault, when, for how long
* ``checker``   after heal and drain: acked, lost, double counted, tallies against a recount
* ``timeline``  per-second acks, p99, spill size and consumer lag, and the PNG
* ``report``    the Markdown table and the JSON document
* ``runner``    one session: the stack, the services, each scenario in turn
"""
