"""The enterprise's rights: consents and their lifecycle, fair-use limits per purpose, data
minimization and ageing of negative records, disputes, and the proven view of who accessed what.

May import xinyi.audit, xinyi.crypto, xinyi.records and the foundation and shared modules
(errors, clock, config, v1, policy, directory); never compute or the services.
"""
