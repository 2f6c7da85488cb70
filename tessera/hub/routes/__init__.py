"""The hub's HTTP routes, one router per resource. They translate requests into calls on the
``HubService`` (and the provider service) and replies back; they decide nothing.

    runs           POST/GET /v1/runs, a run's status, rounds, versions, contributions, credits, blobs
    workers        POST /v1/runs/{run}/workers, /leases (a waiting lease holds no thread)
    contributions  POST /v1/runs/{run}/contributions
    merges         POST/GET /v1/runs/{run}/merges
    adapters       POST/GET /v1/runs/{run}/adapters, one, its blob
    datasets       /v1/datasets: versions, their files, descendants, withdrawal, access
    lineage        GET /v1/runs/{run}/lineage (what produced a version), /events
    providers      /v1/whoami, /v1/providers, members, tokens, /v1/ledger
    probe          GET/POST /v1/probe (bandwidth probes, within a budget)
"""
