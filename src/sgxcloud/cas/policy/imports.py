"""Secrets shared between policies: only where both sides say so."""

from __future__ import annotations

from sgxcloud.cas.errors import PolicyError, PolicyProblem
from sgxcloud.cas.policy.model import Policy


def check_import(importing: Policy, exporting: Policy) -> dict[str, str]:
    """Check every import of ``importing`` from ``exporting``; return local -> exported names.

    An import holds only if the exporter has the secret, lists the importer in
    its ``export_to``, and both sides agree on the kind.  ``PolicyError`` lists
    every import that does not hold, with the importer's field paths.
    """
    problems: list[PolicyProblem] = []
    pairs: dict[str, str] = {}
    for spec in importing.imports:
        assert spec.import_from is not None
        if spec.import_from.policy != exporting.name:
            continue
        where = f"secrets.{spec.name}.import_from"
        source = exporting.secrets.get(spec.import_from.secret)
        if source is None:
            problems.append(
                PolicyProblem(
                    where, f"policy {exporting.name!r} has no secret {spec.import_from.secret!r}"
                )
            )
        elif importing.name not in source.export_to:
            problems.append(
                PolicyProblem(
                    where,
                    f"policy {exporting.name!r} does not export "
                    f"{source.name!r} to {importing.name!r}",
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
