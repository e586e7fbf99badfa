"""Which extra (pyproject.toml ``[project.optional-dependencies]``) installs a
module, so that a command run without it names the extra instead of dying.

A bare ``pip install sgxcloud`` has only the core dependencies; every role
(compute/controller node, admin workstation, CAS server, enclave client,
clean room) adds its extra.  See docs/operations/install.md.
"""

from __future__ import annotations

# Top-level import name -> the smallest extra that brings it in.  Modules that
# arrive only as dependencies of these (pydantic with fastapi, oslo.* with
# nova) are listed too: they are what an ImportError names.
EXTRA_FOR_MODULE: dict[str, str] = {
    # compute and controller nodes
    "nova": "nova",
    "os_traits": "nova",
    "oslo_config": "nova",
    "oslo_log": "nova",
    "oslo_utils": "nova",
    "lxml": "host",
    "prometheus_client": "host",
    # admin workstation
    "openstack": "admin",
    "osc_lib": "admin",
    "openstackclient": "admin",
    "cliff": "admin",
    "keystoneauth1": "admin",
    "matplotlib": "admin",
    # enclave-side client
    "httpx": "client",
    # CAS server
    "fastapi": "cas",
    "starlette": "cas",
    "pydantic": "cas",
    "uvicorn": "cas",
    "sqlalchemy": "cas",
    "alembic": "cas",
    "psycopg": "cas",
    "dcap_qvl": "cas",
    # clean room
    "duckdb": "cleanroom",
    "pyarrow": "cleanroom",
    "opendp": "cleanroom",
    "statsmodels": "cleanroom",
    "pandas": "cleanroom",
    "numpy": "cleanroom",
    "phonenumbers": "cleanroom",
    "OpenSSL": "cleanroom",
    # the in-process cloud (demo, functional tests)
    "placement": "test-nova",
    "fixtures": "test-nova",
    "testtools": "test-nova",
    "wsgi_intercept": "test-nova",
    "jinja2": "test",
}


def extra_for(exc: ModuleNotFoundError) -> str | None:
    """The extra that would have provided the module ``exc`` misses."""
    if not exc.name or exc.name.split(".")[0] == "sgxcloud":
        return None
    return EXTRA_FOR_MODULE.get(exc.name.split(".")[0])


def install_hint(exc: ModuleNotFoundError) -> str:
    """One line: what is missing and the pip command that brings it."""
    extra = extra_for(exc)
    if extra is None:
        return f"the Python module {exc.name!r} is not installed"
    return f"it needs the '{extra}' extra: pip install 'sgxcloud[{extra}]' (missing {exc.name!r})"
