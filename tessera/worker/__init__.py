"""The worker: hub client, work loop (lease, download, train, upload), hardware probe."""
