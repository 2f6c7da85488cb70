"""Who may do what on a hub. Every request carries a provider's API token.

Roles: a hub admin (``is_admin``); a run's owner (the provider who created it); a member of a
run's collective (or, for a run with no collective, any provider of the hub); the run's
collective itself (its own token); others.

| action                                   | admin | run owner | member | collective | other |
| ---------------------------------------- | ----- | --------- | ------ | ---------- | ----- |
| create providers, collectives, members   | yes   | -         | -      | no         | no    |
| create a run                             | yes   | -         | yes    | yes        | yes   |
| attach a run to a collective             | yes   | -         | yes    | yes        | no    |
| register, lease, upload (work on a run)  | yes   | yes       | yes    | no*        | no    |
| read a run's versions and blobs          | yes   | yes       | yes    | yes        | no    |
| read a run's status and metrics          | yes   | yes       | yes    | yes        | no    |
| merge a run's modules                    | yes   | yes       | no     | no         | no    |
| pause or resume a run                    | yes   | yes       | no     | no         | no    |
| join the pool, read its queue, list own pool workers and pledges | yes | yes | yes | yes | yes |
| place a pool worker                      | own   | own       | own    | own        | own   |
| pledge to a run (one may work on)        | yes   | yes       | yes    | no         | no    |
| pledge to a collective (one's own)       | yes   | yes       | yes    | yes        | no    |
| cancel a pledge                          | all   | own       | own    | own        | own   |
| read the ledger                          | all   | own       | own and own collectives' | own | own |
| register a dataset version               | yes   | yes       | yes    | yes        | yes   |
| read a dataset version                   | all   | own       | by its visibility (tessera.hub.access) |
| upload a version's files, withdraw it    | all   | own       | no     | no         | no    |
| revoke or restore access to a version    | all   | own       | no     | no         | no    |
| explain a provider's access to a version | all   | own       | one's own access only             |
| create or revoke one's own tokens        | yes   | yes       | yes    | yes        | yes   |
| revoke another provider's token          | yes   | no        | no     | no         | no    |

"member" means any provider for a run without a collective. * A collective that creates a run
owns it, and works on it as its owner. A missing, unknown or revoked
token is 401; a known token without the right is 403. Quotas (tessera.hub.config.HubLimits)
apply to everyone but hub admins.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.errors import Forbidden


@dataclass(frozen=True)
class Principal:
    provider_id: str
    name: str
    is_admin: bool
    collectives: frozenset[str]


def require_admin(p: Principal, action: str) -> None:
    if not p.is_admin:
        raise Forbidden(f"{action} needs a hub admin's token; ask the hub's admin")


def may_work_on(p: Principal, owner_id: str, collective_id: str | None) -> bool:
    """Work on a run and read its versions and metrics."""
    return p.is_admin or p.provider_id == owner_id or collective_id is None or collective_id in p.collectives


def may_read(p: Principal, owner_id: str, collective_id: str | None) -> bool:
    """Read a run's status, metrics, versions and blobs: those who may work on it, and the run's
    collective itself."""
    own_collective = collective_id is not None and p.provider_id == collective_id
    return may_work_on(p, owner_id, collective_id) or own_collective


def require_reader(p: Principal, run_id: str, owner_id: str, collective_id: str | None) -> None:
    if not may_read(p, owner_id, collective_id):
        raise Forbidden(
            f"provider {p.name} may not read run {run_id}: it belongs to a collective {p.name} is not in"
        )


def require_participant(p: Principal, run_id: str, owner_id: str, collective_id: str | None) -> None:
    if not may_work_on(p, owner_id, collective_id):
        raise Forbidden(
            f"provider {p.name} is not a member of run {run_id}'s collective; ask its owner or a hub admin"
        )


def may_read_ledger_of(p: Principal, provider_id: str) -> bool:
    return p.is_admin or provider_id == p.provider_id or provider_id in p.collectives
