"""The node broker: the MQTT broker devices connect to on a node (PROTOCOL.md "Node broker").

A separate process (``python -m broker.node --config PATH``), run by the agent as a system app.
It reuses the cloud broker's hardened core (``broker.core.HardenedBroker``) with its own
identities (``auth``: device certificates from the device CA, the agent's node certificate from
the cloud CA, device passwords), its own ACL (``acl``: per-device filters), a spool of routed
messages committed before their PUBACK (``spool``), and a status file for the agent (``status``).

Modules: ``config`` (the file, validated), ``tls`` (optional client certificates, two CAs),
``auth``, ``acl``, ``spool``, ``core`` (``NodeBroker``), ``status``, ``server`` (the process).
Errors are ``broker.errors``' (``NodeConfigError``, ``SpoolError``, ``TLSConfigError``).
"""
