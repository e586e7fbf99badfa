"""Secrets shared between policies: only where both sides say so, naming each other by identity.

A policy name is not an identity: any caller may create a policy under a name
that is free (never used, or used by a policy since deleted).  So each side
pins the other by one of its owners' principal ids as well as its name; a
squatter with a different key holds the name but not the identity.

An owner id counts only if that owner signed the policy: the caller passes
the *signed* owner ids the service stored (never the ids a document merely
lists, which its author alone chose).
"""

from __future__ import annotations

from sgxcloud.cas.errors import PolicyError, PolicyProblem
from sgxcloud.cas.policy.model import Policy


def check_import(
    importing: Policy,
    exporting: Policy,
    *,
    importer_owners: frozenset[str],
    exporter_owners: frozenset[str],
) -> dict[str, str]:
    """Check every import of ``importing`` from ``exporting``; return local -> exported names.

    ``importer_owners`` and ``exporter_owners`` are the owners who signed each
    policy.  An import holds only if the exporter is owned by the owner the
    import names, has the secret, offers it to a policy of the importer's
    name *and* an owner the importer has, and both sides agree on the kind.
    ``PolicyError`` lists every import that does not hold, with the
    importer's field paths.  Messages name policies and secrets, never keys.
    """
    problems: list[PolicyProblem] = []
    pairs: dict[str, str] = {}
    # Only owners who are both listed and signed: a stored set never widens a document.
    importer_owners = importer_owners & importing.owner_ids
    exporter_owners = exporter_owners & exporting.owner_ids
    for spec in importing.imports:
        assert spec.import_from is not None
        if spec.import_from.policy != exporting.name:
            continue
        where = f"secrets.{spec.name}.import_from"
        source = exporting.secrets.get(spec.import_from.secret)
        if spec.import_from.owner not in exporter_owners:
            problems.append(
                PolicyProblem(f"{where}.owner", f"is not an owner of policy {exporting.name!r}")
            )
        elif source is None:
            problems.append(
                PolicyProblem(
                    where, f"policy {exporting.name!r} has no secret {spec.import_from.secret!r}"
                )
            )
        elif not any(
            grant.policy == importing.name and grant.owner in importer_owners
            for grant in source.export_to
        ):
            problems.append(
                PolicyProblem(
                    where,
                    f"policy {exporting.name!r} does not export "
                    f"{source.name!r} to {importing.name!r} with any of its owners",
                )
            )
        elif source.kind != spec.kind:
            problems.append(
                PolicyProblem(
                    f"secrets.{spec.name}.kind",
                    f"is {spec.kind} but {exporting.name}/{source.name} is {source.kind}",
                )
            )
        else:
            pairs[spec.name] = source.name
    if problems:
        raise PolicyError.from_problems(problems)
    return pairs
