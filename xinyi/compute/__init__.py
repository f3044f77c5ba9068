"""What is computed from records without handing them out: features, scoring models and their
evaluation, differentially private statistics, and alerts to subscribed institutions.

May import xinyi.privacy and everything below it (audit, crypto, records), the foundation
modules, policy and store; never the command line, the client or the node and registry services.
"""
