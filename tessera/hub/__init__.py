"""The hub: thin HTTP routes -> services (runs, rounds) -> state (SQL) + store (blobs)."""
