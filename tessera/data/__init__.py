"""Corpora, domain shards, the held-out split, and batching."""
