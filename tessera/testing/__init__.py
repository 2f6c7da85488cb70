"""Harnesses for tests, benchmarks and the demo, apart from the code that serves users.

``cluster`` starts a hub and worker processes on this machine; ``inprocess`` calls a hub
service without HTTP; ``adversary`` plays hostile workers; ``netlab`` emulates slow networks.
No module outside ``tessera.testing`` (and the demo) imports it.
"""
