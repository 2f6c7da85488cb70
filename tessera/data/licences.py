"""The licences a dataset version may declare (SPDX ids), and what each allows: the uses a run
may declare (``research``, ``commercial``) and whether derived datasets may be made from it.

This is tessera's reading of the common data and code licences, to refuse the plain conflicts
(non-commercial data in a commercial run, a derivative of no-derivatives data) before any work;
it is no legal advice, and an owner who needs another licence asks the hub's admin to add it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.errors import ConfigError

USES = ("research", "commercial")


@dataclass(frozen=True)
class Licence:
    spdx: str
    uses: tuple[str, ...] = USES
    derivatives: bool = True


RESEARCH_ONLY = ("research",)
LICENCES = {
    lic.spdx: lic
    for lic in (
        *(
            Licence(spdx)
            for spdx in (
                "MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "PSF-2.0", "Python-2.0",
                "Unlicense", "CC0-1.0", "CC-BY-4.0", "CC-BY-SA-4.0", "ODC-By-1.0", "ODbL-1.0",
                "PDDL-1.0", "CDLA-Permissive-2.0", "CDLA-Sharing-1.0", "MPL-2.0", "GPL-2.0-only",
                "GPL-3.0-only", "GPL-3.0-or-later", "LGPL-3.0-only", "AGPL-3.0-only", "GFDL-1.3-only",
            )
        ),
        Licence("CC-BY-ND-4.0", derivatives=False),
        Licence("CC-BY-NC-4.0", RESEARCH_ONLY),
        Licence("CC-BY-NC-SA-4.0", RESEARCH_ONLY),
        Licence("CC-BY-NC-ND-4.0", RESEARCH_ONLY, derivatives=False),
    )
}  # fmt: skip


def licence(spdx: str) -> Licence:
    """The licence with this SPDX id; ConfigError listing the known ones otherwise."""
    if spdx not in LICENCES:
        raise ConfigError(
            f"licence {spdx!r} is not one tessera knows; use an SPDX id from {sorted(LICENCES)}"
        )
    return LICENCES[spdx]


def check_use(use: str) -> None:
    if use not in USES:
        raise ConfigError(f"run use must be one of {list(USES)}, got {use!r}")


def refusal(spdx: str, use: str) -> str | None:
    """Why a run declaring ``use`` may not train on data under ``spdx``, or None if it may."""
    if use in licence(spdx).uses:
        return None
    return f"its licence {spdx} allows only {', '.join(licence(spdx).uses)} use, and the run declares {use}"
