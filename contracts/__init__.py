"""Wire contracts: every message, the flow graph and the execution snapshot, as msgspec Structs.

This package imports nothing of the project. Each message carries a schema version ``v``; readers
refuse a newer ``v`` with an error naming both versions and skip unknown fields, so peers can be
upgraded one at a time.
"""
