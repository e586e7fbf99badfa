"""The recorded compute nodes of tests/checks, for recipes applied to a node."""

from tests.checks.conftest import tree  # noqa: F401
