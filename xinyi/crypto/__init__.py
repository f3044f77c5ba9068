"""Who is speaking and what they signed: identities, certificates, signed envelopes, sealed answers.

Keys and certificates travel as typed objects (Identity, TrustAnchor, Principal), never as loose
bytes. May import xinyi.records and the foundation modules (errors, clock, v1); nothing above.
"""
