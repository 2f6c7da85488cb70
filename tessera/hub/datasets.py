"""Dataset versions at the hub: registering them (content-addressed, versioned per owner and
name), receiving their files (resumable: each file is its own checked upload), reading them,
their derivations, and withdrawing them.

A version's id is the Merkle root over its files (tessera.data.datasets), computed here from the
listed files, so the id and the files agree; each uploaded file must have the listed sha256 and
size, and a version is ``ready`` (usable) only once every file is here. Registering the same
files again is the same version (the answer lists what is still missing: the client resumes by
uploading only that). A private version gives only its id and statistics. A derived version
names its inputs, which must exist, be readable by its maker and not be withdrawn; it may be no
more visible, and its licence allow no more, than each input. Withdrawing a version marks every
version derived from it (transitively) and tells the runs that train on any of them.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tessera.api.commons import (
    AccessExplanation,
    DatasetFile,
    DatasetInfo,
    DatasetRequest,
    Derivation,
    WithdrawReply,
)
from tessera.blobs import sha256_hex
from tessera.data.datasets import FileEntry, check_manifest, merkle_root
from tessera.data.licences import licence
from tessera.data.transforms import TRANSFORMS
from tessera.errors import ConfigError, Conflict, DataError, MalformedContribution, NotFound, QuotaExceeded
from tessera.hub import access, lineage, queries
from tessera.hub.auth import Principal
from tessera.hub.context import HubContext
from tessera.hub.providers import own_collective
from tessera.hub.tables import (
    AccessRevocation,
    Dataset,
    DatasetBlob,
    DatasetInput,
    Provider,
    Run,
    RunDataset,
    RunEvent,
)

LIST_LIMIT = 1000
CHUNK = 1000  # files looked up at once


def no_wider(d: Dataset, req: DatasetRequest, who: Principal, collective_id: str | None) -> bool:
    """Whether a version registered by ``who`` under ``req``'s terms (``collective_id``: its
    collective's, resolved) is read by no one who may not read its input ``d``."""
    if d.visibility == "public" or req.visibility == "private":
        return True
    if req.visibility != d.visibility:
        return False
    if d.visibility == "collective":
        return collective_id == d.collective_id
    if d.visibility == "contributors":
        same_terms = req.threshold_run == d.threshold_run_id and (req.threshold_pflop or 0.0) >= (
            d.threshold_pflop or 0.0
        )
        return who.provider_id == d.owner_id and same_terms
    return False


def entries(d: Dataset) -> list[FileEntry]:
    return [FileEntry(path, sha, size) for path, sha, size in d.files]


class Datasets:
    def __init__(self, hub: HubContext) -> None:
        self.hub = hub

    # --- registering -------------------------------------------------------------------

    def add(self, who: Principal, req: DatasetRequest) -> DatasetInfo:
        """Register a dataset version (or answer the one these files already are); a registration
        that raced another of the same version or name (another hub process) is told to retry."""
        try:
            return self._add(who, req)
        except IntegrityError as exc:
            raise Conflict(
                "another registration of these files, or of a version of this name, committed first; "
                "run the same command again"
            ) from exc

    def _add(self, who: Principal, req: DatasetRequest) -> DatasetInfo:
        root, files = self._content(req)
        for input_id in req.derivation.inputs if req.derivation else []:
            self.authorize(who, input_id)
        with self.hub.state.transaction() as s:
            self._check_inputs(s, who, req)
            existing = s.get(Dataset, root)
            if existing is not None:
                return self._again(s, who, existing, req)
            collective_id = self._terms(s, who, req)
            self._check_quota(s, who, req, files)
            previous = self._latest(s, who.provider_id, req.name)
            row = Dataset(
                id=root,
                owner_id=who.provider_id,
                name=req.name,
                number=(previous.number + 1) if previous else 1,
                parent_id=previous.id if previous else None,
                licence=req.licence,
                description=req.description,
                visibility=req.visibility,
                collective_id=collective_id,
                threshold_pflop=req.threshold_pflop,
                threshold_run_id=req.threshold_run,
                stored=req.visibility != "private",
                state="uploading" if files else "ready",
                file_count=len(files) if files else req.file_count,
                nbytes=sum(f.size for f in files) if files else req.nbytes,
                files=[[f.path, f.sha256, f.size] for f in files],
                transform=req.derivation.transform if req.derivation else None,
                params=req.derivation.params if req.derivation else None,
                code_version=req.derivation.code_version if req.derivation else None,
                deterministic=req.derivation.deterministic if req.derivation else True,
                tainted_by=[],
                created_at=self.hub.clock(),
            )
            s.add(row)
            for i, input_id in enumerate(req.derivation.inputs if req.derivation else []):
                s.add(DatasetInput(dataset_id=root, input_id=input_id, position=i))
            s.flush()
            self._inherit(s, who, row, files)
            self._update_state(s, row)
            return self.info(s, row)

    def _content(self, req: DatasetRequest) -> tuple[str, list[FileEntry]]:
        """The version's id, and its files (none for a private version)."""
        licence(req.licence)
        if req.visibility == "private":
            if req.files or req.root is None or req.file_count < 1:
                raise DataError(
                    "a private dataset is registered by its id and statistics only: give root and "
                    "file_count, and no files (its files never leave your nodes)"
                )
            return req.root, []
        files = [FileEntry(f.path, f.sha256, f.size) for f in req.files]
        check_manifest(files)
        max_file = self.hub.config.limits.max_dataset_file_bytes
        big = next((f for f in files if f.size > max_file), None)
        if big is not None:
            raise DataError(
                f"file {big.path!r} has {big.size} bytes; this hub takes files of at most {max_file}"
            )
        root = merkle_root(files)
        if req.root is not None and req.root != root:
            raise DataError(f"the files listed have the Merkle root {root}, not the root given ({req.root})")
        return root, files

    def _again(self, s: Session, who: Principal, d: Dataset, req: DatasetRequest) -> DatasetInfo:
        """Registering a version that exists: its owner is answered with it (and what is still
        missing), and so is whoever may read it and re-ran its derivation (a reproduction);
        another provider is told it exists only if it may read it."""
        if d.owner_id != who.provider_id:
            if not access.decide(s, who, d).granted:
                raise Conflict("these files are registered already by another provider")
            if req.derivation is not None and self.info(s, d).derivation == req.derivation:
                return self.info(s, d)
            raise Conflict(f"these files are dataset version {d.id} already, which you may use as it is")
        if (d.name, d.visibility, d.licence) != (req.name, req.visibility, req.licence):
            raise Conflict(
                f"these files are your dataset {d.name} version {d.number} already ({d.visibility}, "
                f"{d.licence}); a version's terms do not change: register changed files as a new version"
            )
        self._update_state(s, d)
        return self.info(s, d)

    def _terms(self, s: Session, who: Principal, req: DatasetRequest) -> str | None:
        """The collective of a collective version; checks of each visibility's own settings."""
        if (req.visibility == "collective") != (req.collective is not None):
            raise ConfigError("visibility collective needs --collective NAME (and only it takes one)")
        if (req.visibility == "contributors") != (req.threshold_pflop is not None):
            raise ConfigError("visibility contributors needs a threshold in PFLOP (and only it takes one)")
        if req.threshold_run is not None and (
            req.visibility != "contributors" or s.get(Run, req.threshold_run) is None
        ):
            raise ConfigError(
                f"threshold_run {req.threshold_run}: no such run, or visibility is not contributors"
            )
        if req.collective is None:
            return None
        return own_collective(s, who, req.collective, "; a collective dataset belongs to one of yours").id

    def _check_inputs(self, s: Session, who: Principal, req: DatasetRequest) -> None:
        """A derivation's inputs exist, may be read and derived from, and allow its terms."""
        if req.derivation is None:
            return
        if req.derivation.transform not in TRANSFORMS:
            raise ConfigError(
                f"unknown transform {req.derivation.transform!r}; built in: {sorted(TRANSFORMS)}"
            )
        TRANSFORMS[req.derivation.transform].parse(req.derivation.params)  # as recorded: typed, bounded
        if len(set(req.derivation.inputs)) != len(req.derivation.inputs):
            raise DataError("a derivation names each input once; drop the repeated --from")
        granted = licence(req.licence).uses
        collective_id = own_collective(s, who, req.collective).id if req.collective else None
        for input_id in req.derivation.inputs:
            d = access.readable(s, who, input_id)
            if d.withdrawn_at is not None or d.tainted_by:
                raise DataError(
                    f"input {input_id} was withdrawn (or derives from withdrawn data); derive from another"
                )
            if not licence(d.licence).derivatives:
                raise DataError(f"input {input_id} is under {d.licence}, which allows no derivatives")
            wider = set(granted) - set(licence(d.licence).uses)
            if wider:
                raise DataError(
                    f"input {input_id} is under {d.licence}, which does not allow {sorted(wider)} use; "
                    f"a derived version cannot be licensed wider ({req.licence})"
                )
            if not no_wider(d, req, who, collective_id):
                raise DataError(
                    f"input {input_id} is {d.visibility}; a version derived from it is private, or "
                    f"{d.visibility} on the same terms (the same collective; contributors data: by its "
                    "owner, with the same run and at least its threshold), so that its data is seen by "
                    "no one who may not read the input"
                )

    def _check_quota(self, s: Session, who: Principal, req: DatasetRequest, files: list[FileEntry]) -> None:
        if who.is_admin:
            return
        count = (
            s.scalar(select(func.count()).select_from(Dataset).where(Dataset.owner_id == who.provider_id))
            or 0
        )
        if count >= self.hub.config.limits.max_provider_datasets:
            raise QuotaExceeded(
                f"you have registered {count} dataset versions, the most this hub allows a provider "
                "(limits.max_provider_datasets)"
            )
        total = int(
            s.scalar(
                select(func.coalesce(func.sum(Dataset.nbytes), 0)).where(
                    Dataset.owner_id == who.provider_id, Dataset.stored
                )
            )
            or 0
        )
        limit = self.hub.config.limits.max_provider_dataset_bytes
        new = sum(f.size for f in files)
        if total + new > limit:
            raise QuotaExceeded(
                f"your datasets at this hub would hold {total + new} bytes, over your quota of {limit}"
            )

    @staticmethod
    def _latest(s: Session, owner_id: str, name: str) -> Dataset | None:
        return s.scalars(
            select(Dataset)
            .where(Dataset.owner_id == owner_id, Dataset.name == name)
            .order_by(Dataset.number.desc())
            .limit(1)
        ).first()

    # --- files ---------------------------------------------------------------------------

    def file_size(self, who: Principal, dataset_id: str, sha: str) -> int:
        """The size a file's upload must have (403 or 404 unless ``who`` owns the version and the
        file is one of it)."""
        with self.hub.state.reading() as s:
            d = access.owned(s, who, dataset_id, "upload its files")
            sizes = {f.sha256: f.size for f in entries(d)}
        if sha not in sizes:
            raise NotFound(f"dataset version {dataset_id} has no file with sha256 {sha}")
        return sizes[sha]

    def put_file(self, who: Principal, dataset_id: str, sha: str, body: bytes) -> DatasetInfo:
        """Keep one file of a version, if it is the listed one (nothing is kept otherwise)."""
        size = self.file_size(who, dataset_id, sha)
        if len(body) != size or sha256_hex(body) != sha:
            raise MalformedContribution(
                f"the body ({len(body)} bytes, sha256 {sha256_hex(body)[:16]}) is not file {sha[:16]} "
                f"({size} bytes) of dataset {dataset_id[:16]}; upload the file's exact bytes"
            )
        self.hub.store.put(body)
        with self.hub.state.transaction() as s:
            d = access.owned(s, who, dataset_id, "upload its files")
            if s.get(DatasetBlob, (dataset_id, sha)) is None:
                s.add(DatasetBlob(dataset_id=dataset_id, sha=sha))
                s.flush()
            self._update_state(s, d)
            return self.info(s, d)

    def missing(self, s: Session, d: Dataset) -> list[str]:
        """The files of ``d`` the hub does not hold for it yet."""
        if d.state == "ready":
            return []
        held = set(s.scalars(select(DatasetBlob.sha).where(DatasetBlob.dataset_id == d.id)))
        return sorted({f.sha256 for f in entries(d)} - held)

    def _update_state(self, s: Session, d: Dataset) -> None:
        if d.state == "uploading" and not self.missing(s, d):
            d.state = "ready"

    def _inherit(self, s: Session, who: Principal, d: Dataset, files: list[FileEntry]) -> None:
        """Hold for ``d`` the files that are files of versions ``who`` may read, with the sizes
        listed (what is already here need not be uploaded again; nothing else counts as here)."""
        sizes = {f.sha256: f.size for f in files}
        shas, memo, kept = sorted(sizes), access.Memo(), set()
        for start in range(0, len(shas), CHUNK):
            chunk = shas[start : start + CHUNK]
            held = select(DatasetBlob.sha, Dataset).join(Dataset, Dataset.id == DatasetBlob.dataset_id)
            rows = s.execute(held.where(DatasetBlob.sha.in_(chunk)))
            for sha, other in rows:
                if (
                    sha not in kept
                    and access.decide(s, who, other, memo).granted
                    and self._size(sha) == sizes[sha]
                ):
                    kept.add(sha)
        s.add_all(DatasetBlob(dataset_id=d.id, sha=sha) for sha in sorted(kept))
        s.flush()

    def _size(self, sha: str) -> int | None:
        return self.hub.store.path(sha).stat().st_size if self.hub.store.has(sha) else None

    def authorize(self, who: Principal, dataset_id: str) -> None:
        """404 unless ``who`` may read the version; the decision is recorded (and kept) either way."""
        with self.hub.state.transaction() as s:
            granted = access.check(s, who, dataset_id, self.hub.clock()).granted
        if not granted:
            raise access.not_found(dataset_id)

    def files(self, who: Principal, dataset_id: str) -> list[DatasetFile]:
        self.authorize(who, dataset_id)
        with self.hub.state.reading() as s:
            d = access.readable(s, who, dataset_id)
            return [DatasetFile(path=f.path, sha256=f.sha256, size=f.size) for f in entries(d)]

    def file(self, who: Principal, dataset_id: str, sha: str) -> bytes:
        self.authorize(who, dataset_id)
        with self.hub.state.reading() as s:
            d = access.readable(s, who, dataset_id)
            if sha not in {f.sha256 for f in entries(d)}:
                raise NotFound(f"dataset version {dataset_id} has no file with sha256 {sha}")
            if s.get(DatasetBlob, (dataset_id, sha)) is None:
                raise NotFound(
                    f"file {sha} of dataset {dataset_id} is not uploaded yet; its owner resumes the upload "
                    "with tessera data add"
                )
        return self.hub.store.get(sha)

    # --- reading -----------------------------------------------------------------------

    def info(self, s: Session, d: Dataset) -> DatasetInfo:
        owner = s.get(Provider, d.owner_id)
        collective = s.get(Provider, d.collective_id) if d.collective_id else None
        inputs = list(
            s.scalars(
                select(DatasetInput.input_id)
                .where(DatasetInput.dataset_id == d.id)
                .order_by(DatasetInput.position)
            )
        )
        derivation = None
        if d.transform is not None:
            derivation = Derivation(
                inputs=inputs,
                transform=d.transform,
                params=d.params or {},
                code_version=d.code_version or "",
                deterministic=d.deterministic,
            )
        return DatasetInfo(
            dataset_id=d.id,
            name=d.name,
            number=d.number,
            owner=owner.name if owner else d.owner_id,
            parent_id=d.parent_id,
            licence=d.licence,
            description=d.description,
            visibility=d.visibility,
            collective=collective.name if collective else None,
            threshold_pflop=d.threshold_pflop,
            threshold_run=d.threshold_run_id,
            stored=d.stored,
            state=d.state,
            file_count=d.file_count,
            nbytes=d.nbytes,
            missing=self.missing(s, d),
            derivation=derivation,
            withdrawn_at=d.withdrawn_at,
            withdrawn_reason=d.withdrawn_reason,
            tainted_by=list(d.tainted_by),
            created_at=d.created_at,
        )

    def get(self, who: Principal, dataset_id: str) -> DatasetInfo:
        self.authorize(who, dataset_id)
        with self.hub.state.reading() as s:
            return self.info(s, access.readable(s, who, dataset_id))

    def visible(self, who: Principal, owner: str | None = None, name: str | None = None) -> list[DatasetInfo]:
        """The versions ``who`` may read, newest first (at most ``LIST_LIMIT``), optionally of one
        owner (name or id) and name."""
        with self.hub.state.reading() as s:
            query = (
                select(Dataset)
                .where(access.maybe_visible(who))
                .order_by(Dataset.created_at.desc(), Dataset.number.desc())
            )
            if owner is not None:
                found = queries.provider_named(s, owner)
                query = query.where(Dataset.owner_id == (found.id if found else ""))
            if name is not None:
                query = query.where(Dataset.name == name)
            shown, memo = [], access.Memo()
            for d in s.scalars(query):
                if access.decide(s, who, d, memo).granted:
                    shown.append(self.info(s, d))
                    if len(shown) == LIST_LIMIT:
                        break
            return shown

    def versions(self, who: Principal, dataset_id: str) -> list[DatasetInfo]:
        """Every version of the same owner and name that ``who`` may read, oldest first."""
        self.authorize(who, dataset_id)
        with self.hub.state.reading() as s:
            d = access.readable(s, who, dataset_id)
            rows = s.scalars(
                select(Dataset)
                .where(Dataset.owner_id == d.owner_id, Dataset.name == d.name)
                .order_by(Dataset.number)
            )
            return [self.info(s, v) for v in rows if access.decide(s, who, v).granted]

    def descendants(self, who: Principal, dataset_id: str) -> list[DatasetInfo]:
        """The versions derived from this one (transitively) that ``who`` may read."""
        self.authorize(who, dataset_id)
        with self.hub.state.reading() as s:
            ids = lineage.descendants(s, dataset_id)
            rows = s.scalars(select(Dataset).where(Dataset.id.in_(ids)).order_by(Dataset.created_at))
            return [self.info(s, v) for v in rows if access.decide(s, who, v).granted]

    # --- withdrawing and revoking ------------------------------------------------------

    def withdraw(self, who: Principal, dataset_id: str, reason: str) -> WithdrawReply:
        """Withdraw a version: no new lease trains on it, its descendants are marked, and the runs
        that train on it or on a descendant are told (an event each). Withdrawing twice answers
        the first withdrawal."""
        now = self.hub.clock()
        with self.hub.state.transaction() as s:
            d = access.owned(s, who, dataset_id, "withdraw it")
            marked = lineage.descendants(s, dataset_id)
            if d.withdrawn_at is None:
                d.withdrawn_at, d.withdrawn_reason = now, reason
                for row in s.scalars(select(Dataset).where(Dataset.id.in_(marked))) if marked else []:
                    if dataset_id not in row.tainted_by:
                        row.tainted_by = [*row.tainted_by, dataset_id]
                runs = self._tell_runs(s, d, [dataset_id, *marked], reason, now)
            else:
                runs = sorted(
                    set(
                        s.scalars(
                            select(RunEvent.run_id).where(
                                RunEvent.subject == dataset_id, RunEvent.kind == "dataset_withdrawn"
                            )
                        )
                    )
                )
            return WithdrawReply(
                dataset_id=dataset_id,
                withdrawn_at=d.withdrawn_at or now,
                descendants_marked=len(marked),
                runs_told=runs,
            )

    @staticmethod
    def _tell_runs(s: Session, d: Dataset, ids: list[str], reason: str, now: float) -> list[str]:
        runs = sorted(set(s.scalars(select(RunDataset.run_id).where(RunDataset.dataset_id.in_(ids)))))
        for run_id in runs:
            s.add(
                RunEvent(
                    run_id=run_id,
                    kind="dataset_withdrawn",
                    detail=f"dataset version {d.id[:16]}, which this run trains on (or derives from), was "
                    "withdrawn by its owner: no new lease trains on it or on data derived from it "
                    "(its readers see why: tessera data show)",
                    subject=d.id,
                    at=now,
                )
            )
        return runs

    def revoke(self, who: Principal, dataset_id: str, provider: str, reason: str) -> None:
        """Revoke one provider's access to a version, whatever it earned."""
        with self.hub.state.transaction() as s:
            access.owned(s, who, dataset_id, "revoke access to it")
            target = self._provider(s, provider)
            if s.get(AccessRevocation, (dataset_id, target.id)) is None:
                s.add(AccessRevocation(dataset_id=dataset_id, provider_id=target.id, reason=reason,
                                       by_id=who.provider_id, at=self.hub.clock()))  # fmt: skip

    def restore(self, who: Principal, dataset_id: str, provider: str) -> None:
        """Lift a revocation (the provider's access is decided by the rules again)."""
        with self.hub.state.transaction() as s:
            access.owned(s, who, dataset_id, "restore access to it")
            target = self._provider(s, provider)
            row = s.get(AccessRevocation, (dataset_id, target.id))
            if row is not None:
                s.delete(row)

    def explain(self, who: Principal, dataset_id: str, provider: str) -> AccessExplanation:
        with self.hub.state.transaction() as s:
            return access.explain(s, who, dataset_id, self._provider(s, provider), self.hub.clock())

    @staticmethod
    def _provider(s: Session, name_or_id: str) -> Provider:
        found = queries.provider_named(s, name_or_id)
        if found is None:
            raise NotFound(f"no provider {name_or_id!r} on this hub")
        return found
