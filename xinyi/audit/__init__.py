"""The tamper-evident audit log: RFC 9162 Merkle trees, C2SP signed checkpoints, the log itself,
its verification, and the auditor's desk that serves it.

May import xinyi.crypto, xinyi.records and the foundation modules (errors, clock, config, v1),
and xinyi.policy for the desk's authorization; never privacy, compute or the services. The
database stays behind AuditStore (entry.py).
"""
