"""The I/O edge: wire codec, TLS, the peer transport and durable storage.

Rule: this layer moves bytes and keeps them safe; it makes no protocol
decision. It may import ``core`` for message types, never the shells.
"""
