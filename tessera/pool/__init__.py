"""The pool: availability windows, fair share and the assignment of pool workers to runs
(pure logic; the hub's side is tessera.hub.pool)."""
