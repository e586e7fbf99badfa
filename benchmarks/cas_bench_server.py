"""One CAS replica for the benchmark: ``sgxcloud cas serve``, plus a real quote's cost.

There is no SGX here, so enclaves present SIMULATED evidence; to charge each
attestation what a real one costs, this server's verifier first verifies the
real Intel-signed SGX quote from ../shared/testdata/dcap with warm collateral
(dcap-qvl, exactly what ``DcapVerifier`` does for a real enclave), then
judges the simulated evidence.  Everything else is the production
composition root (``build_service`` → ``create_app`` → uvicorn with TLS).

Run by benchmarks/bench_cas.py: ``python benchmarks/cas_bench_server.py CONFIG PORT``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn

ROOT = Path(__file__).resolve().parents[1]
# SGXCLOUD_BENCH_SRC: serve another tree's code (the baseline) with this harness.
sys.path.insert(0, os.environ.get("SGXCLOUD_BENCH_SRC", str(ROOT / "src")))

from sgxcloud.cas.collateral import FileCollateral  # noqa: E402
from sgxcloud.cas.config import load_settings  # noqa: E402
from sgxcloud.cas.evidence import DefaultVerifier, load_evidence  # noqa: E402
from sgxcloud.cas.service import server  # noqa: E402
from sgxcloud.cas.service.app import create_app  # noqa: E402

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
        self.real.verify(self.quote, QUOTE_TIME)
        return self.inner.verify(evidence, now)


def main() -> None:
    settings = load_settings(Path(sys.argv[1]), port=int(sys.argv[2]))
    service = server.build_service(settings)
    service.verifier = RealQuoteCost(service.verifier)  # type: ignore[assignment]
    assert settings.tls_cert is not None and settings.tls_key is not None
    # Production's options: owners sign for this origin, request limits as configured.
    # Older trees (run as a baseline) had neither: what they take, they get.
    if hasattr(server, "_server_options"):
        limits = settings.request_limits()
        app = create_app(service, audiences=[f"https://127.0.0.1:{settings.port}"], limits=limits)
        options = server._server_options(settings.tls_cert, settings.tls_key, None, limits)
    else:
        try:
            app = create_app(service, audiences=[f"https://127.0.0.1:{settings.port}"])
        except TypeError:
            app = create_app(service)
        options = server._tls_options(settings.tls_cert, settings.tls_key, None)
    uvicorn.run(
        app, host="127.0.0.1", port=settings.port, log_level="warning", access_log=False, **options
    )


if __name__ == "__main__":
    main()
