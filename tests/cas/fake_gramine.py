"""A fake Gramine ``/dev/attestation`` tree that behaves like the real one.

Gramine's interface is two pseudo-files: write 64 bytes of report data to
``user_report_data``, then read ``quote`` and get a quote over exactly those
bytes.  Here ``quote`` is a FIFO served by a thread that reads what was just
written and answers SIMULATED evidence for the enclave identity given, so
the launcher runs unmodified (in another process, from another venv) and
the CAS still checks the binding and the nonce for real.  Also made:
``attestation_type`` ("dcap") and ``keys/`` for encrypted-mount keys.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from types import TracebackType

from sgxcloud.cas.evidence import make_simulated_evidence
from sgxcloud.sgx.identity import EnclaveIdentity


class FakeAttestationDevice:
    def __init__(self, root: Path, identity: EnclaveIdentity) -> None:
        self.root = root
        self.directory = root / "dev/attestation"
        self.identity = identity
        self.quotes_served = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-quote", daemon=True)

    def __enter__(self) -> FakeAttestationDevice:
        (self.directory / "keys").mkdir(parents=True, exist_ok=True)
        (self.directory / "attestation_type").write_text("dcap\n")
        (self.directory / "user_report_data").write_bytes(b"\0" * 64)
        os.mkfifo(self.directory / "quote")
        self._thread.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._stop.set()
        (self.directory / "user_report_data").write_bytes(b"stop".ljust(64, b"\0"))
        # Unblock the serving thread's open() with a reader that goes away at once.
        try:
            fd = os.open(self.directory / "quote", os.O_RDONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        quote = self.directory / "quote"
        # What __enter__ wrote, not a read here: the enclave may have written its
        # report data before this thread first runs.
        served = bytes(64)
        while not self._stop.is_set():
            # One quote per report-data write, as Gramine: wait for a new write first,
            # or a reader still draining the last quote would get a second one.
            report_data = (self.directory / "user_report_data").read_bytes()
            # A 64-byte write that is not the last one served: an empty or short read
            # is the writer's truncate-then-write caught half-way, not a request.
            if len(report_data) != 64 or report_data == served:
                time.sleep(0.002)
                continue
            fd = os.open(quote, os.O_WRONLY)  # blocks until the enclave opens it to read
            try:
                if self._stop.is_set():
                    return
                served = report_data
                evidence = make_simulated_evidence(self.identity, report_data[:64]).raw
                os.write(fd, evidence)
                self.quotes_served += 1
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
            finally:
                os.close(fd)
