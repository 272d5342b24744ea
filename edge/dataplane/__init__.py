"""The node's data plane on the agent's side: the node broker it runs, the routes it carries.

Standard library, paho and shadow's pure modules only (``cryptography`` is loaded by
``edge.dataplane.brokercert`` when it requests a certificate). See ARCHITECTURE.md for
the modules.
"""
