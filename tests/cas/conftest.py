"""Shared helpers for the CAS tests: the real Intel DCAP test vectors.

The vectors live outside the repository, in ``../shared/testdata/dcap`` next
to the repository root (read-only; provenance in its README).  Paths are
resolved from this file, never from the current directory.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

# From ../shared/testdata/dcap/README.md (dcap-qvl 0.7.0 results).
SGX_WINDOW = (1750330571, 1752919278)  # [issue, nextUpdate) of the SGX collateral
SGX_NOW = 1752919277
TDX_NOW = 1752919000
SGX_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
SGX_MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
SGX_STATUS = "ConfigurationAndSWHardeningNeeded"
SGX_ADVISORIES = ("INTEL-SA-00289", "INTEL-SA-00615")
SGX_REPORT_DATA = b"Hello, world!".ljust(64, b"\0")


def dcap_testdata() -> Path:
    """The directory of real DCAP quotes and collateral; skips the test if absent."""
    path = Path(__file__).resolve().parents[2].parent / "shared/testdata/dcap"
    if not (path / "README.md").is_file():
        pytest.skip(f"DCAP test vectors not found at {path} (expected ../shared next to the repo)")
    return path


VECTORS = SimpleNamespace(
    sgx_window=SGX_WINDOW,
    sgx_now=SGX_NOW,
    tdx_now=TDX_NOW,
    mrenclave=SGX_MRENCLAVE,
    mrsigner=SGX_MRSIGNER,
    status=SGX_STATUS,
    advisories=SGX_ADVISORIES,
    report_data=SGX_REPORT_DATA,
)


@pytest.fixture(scope="session")
def vectors() -> SimpleNamespace:
    """Expected results of the real quotes, as the test data README states them."""
    return VECTORS


@pytest.fixture(scope="session")
def testdata() -> Path:
    return dcap_testdata()


@pytest.fixture(scope="session")
def sgx_quote(testdata: Path) -> bytes:
    return (testdata / "sgx_quote").read_bytes()


@pytest.fixture(scope="session")
def sgx_collateral_path(testdata: Path) -> Path:
    return testdata / "sgx_quote_collateral.json"


@pytest.fixture(scope="session")
def sgx_verifier():
    """A DefaultVerifier over the SGX quote's offline collateral (shared: read-only)."""
    from sgxcloud.cas.collateral import FileCollateral
    from sgxcloud.cas.evidence import DefaultVerifier

    return DefaultVerifier(FileCollateral(dcap_testdata() / "sgx_quote_collateral.json"))
