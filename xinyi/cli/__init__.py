"""The `xinyi` command line: main.py builds the parser from one module per command group
(pki, serve, db, health, consent, dispute, query, audit, models, alerts, stats, access), which share
common.py and never import each other.

The top layer: it may import the client library and anything below it, and nothing imports it.
"""
