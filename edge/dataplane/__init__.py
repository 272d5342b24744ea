"""The node's data plane in the agent: routes from the spool to the cloud or the node broker.

The node broker (``broker.node``, a process of its own) stores every message a route's local
source matches in the spool (SQLite) before its device gets the PUBACK; the agent reads it here:

* ``routes`` — a route and a device as the cloud's ``resource/get`` answers them, parsed strictly;
  target templates (``{device}``, ``{node}``, ``{topic}``, ``{1}``..``{9}``) rendered;
* ``filters`` — MQTT topic filters: checked and matched (the edge cannot import the broker's);
* ``spool`` — the agent's side of the spool database: rows after a cursor, cursors, deletes;
* ``publisher`` — ``Publisher`` (publish, acknowledged) and ``PahoPublisher`` over a paho client;
* ``router`` — ``Router``: one task per route, pipelined publishes, the cursor advanced over what
  the broker acknowledged, the downlink, the stats the agent reports;
* ``nodebroker``, ``brokercert``, ``plane`` — the node broker the agent runs (its config, the
  system app, its certificate from the cloud) and ``DataPlane``, the agent's collaborator.

Standard library, paho-mqtt and shadow's pure modules only: the agent at rest stays light
(``cryptography`` is loaded by ``brokercert`` only when it requests a certificate).
Errors are in the edge's one tree (``edge.errors``: ``RouteSpecError``, ``PublishFailed``).
"""

from __future__ import annotations
