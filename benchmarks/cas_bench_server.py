"""One CAS replica for the benchmark: ``sgxcloud cas serve``, plus a real quote's cost.

There is no SGX here, so enclaves present SIMULATED evidence; to charge each
attestation what a real one costs, this server's verifier first verifies the
real Intel-signed SGX quote from ../shared/testdata/dcap with warm collateral
(exactly what ``DcapVerifier`` does for a real enclave), then judges the
simulated evidence.

What a real quote costs depends on what the verifier has seen.  Real enclaves
never repeat a quote (each binds a fresh nonce) but a platform's enclaves share
its PCK chain, QE report and attestation key, and all share the collateral.
So before each attestation the harness forgets the quote itself
(``pck.forget_checked_quotes``) and every attestation pays what a new quote of
a known platform pays: the header, report body and ISV signature read again,
the QE report's signature by the PCK leaf and the ISV signature by the
attestation key verified (two ECDSA verifications), the attestation key's
binding to the QE report, the collateral's window, the quote's platform digest,
and the identity parsed from the quote.  What stays cached, as in production:
the PCK chain's verification (per chain), the collateral (per file), and
dcap-qvl's verdict on that platform and collateral (``DcapVerifier.verdicts``:
TCB status and advisories; see ``sgxcloud.cas.evidence.dcap``).  A platform's
first quote (chain and dcap-qvl too) is measured apart, in bench_cas.py's
quote verification table.  Everything else is production's own
``serve()`` (the code behind ``sgxcloud cas serve``: ``build_service`` →
the app with its metrics, audiences and limits → uvicorn with production's
server options), so whatever the server gains or loses, the benchmark sees.

Run by benchmarks/bench_cas.py: ``python benchmarks/cas_bench_server.py CONFIG PORT``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# SGXCLOUD_BENCH_SRC: serve another tree's code (the baseline) with this harness.
sys.path.insert(0, os.environ.get("SGXCLOUD_BENCH_SRC", str(ROOT / "src")))

from sgxcloud.cas.collateral import FileCollateral  # noqa: E402
from sgxcloud.cas.config import load_settings  # noqa: E402
from sgxcloud.cas.evidence import DefaultVerifier, load_evidence  # noqa: E402
from sgxcloud.cas.service import server  # noqa: E402

try:  # older trees (a --baseline run) have no pre-collateral check
    from sgxcloud.cas.pck import forget_checked_quotes as _forget_checked_quotes
except ImportError:  # pragma: no cover
    _forget_checked_quotes = None

DCAP = ROOT.parent / "shared" / "testdata" / "dcap"
QUOTE_TIME = 1752919277  # inside the sample collateral's validity window


class RealQuoteCost:
    """Verify the real quote (its full cost), then the evidence actually presented."""

    def __init__(self, inner: DefaultVerifier) -> None:
        self.inner = inner
        self.real = DefaultVerifier(FileCollateral(DCAP / "sgx_quote_collateral.json"))
        self.quote = load_evidence((DCAP / "sgx_quote").read_bytes())
        assert self.real.verify(self.quote, QUOTE_TIME).identity.mrenclave.startswith("33d8736d")

    def verify(self, evidence, now):  # type: ignore[no-untyped-def]
        if _forget_checked_quotes is not None:
            # A real enclave's quote is always new (it binds a fresh nonce): no
            # shortcut for having seen this one (the PCK chain and dcap-qvl's
            # verdict on the platform stay cached, as for one platform's
            # enclaves in production).
            _forget_checked_quotes()
        self.real.verify(self.quote, QUOTE_TIME)
        return self.inner.verify(evidence, now)


_production_build = server.build_service


def build_service(*args: Any, **kwargs: Any) -> Any:
    """Production's service, its verifier charged a real quote's cost.

    At module level: with several workers, serve() hands this function to
    each worker process (by name; a worker imports this file again).
    """
    service = _production_build(*args, **kwargs)
    if not hasattr(service, "verifier"):  # never measure without the quote's cost
        raise SystemExit("cas_bench_server: the service has no verifier to wrap")
    service.verifier = RealQuoteCost(service.verifier)
    return service


def main() -> None:
    settings = load_settings(Path(sys.argv[1]), port=int(sys.argv[2]))
    # The one substitution: serve() builds its service through this module
    # attribute (in every revision since the first), so the real quote's cost
    # is added without copying serve()'s composition here.
    server.build_service = build_service  # type: ignore[assignment]
    server.serve(settings)


if __name__ == "__main__":
    main()
