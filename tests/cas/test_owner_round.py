"""The owner's verify round gives up on a CAS that only ever answers 503.

``verify_audit_round`` asks again after a 503 (a CAS busy verifying for another
caller); a 503 did not count as a call, so a CAS — or a proxy pretending to be
one — answering nothing else held ``sgxcloud audit verify`` (even ``--once``)
forever (review of stop 19).  The loop's logic is what is tested: the client is
a stand-in that answers as told.
"""

from __future__ import annotations

import pytest

from sgxcloud.cas.client.errors import ServiceUnavailable
from sgxcloud.cas.client.owner import verify_audit_round


class _Answers:
    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.asked = 0

    def verify_audit(self) -> dict:
        self.asked += 1
        answer = self.answers.pop(0) if self.answers else ServiceUnavailable("503 busy")
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_cas_that_only_answers_503_is_given_up_on() -> None:
    client = _Answers()
    with pytest.raises(ServiceUnavailable):
        verify_audit_round(client, busy_wait=0.0, max_busy=5)  # type: ignore[arg-type]
    assert client.asked == 6


def test_busy_answers_between_calls_do_not_end_a_round() -> None:
    busy = ServiceUnavailable("503 busy")
    client = _Answers(
        busy,
        busy,
        {"ok": True, "round_complete": False},
        busy,
        busy,
        {"ok": True, "round_complete": True},
    )
    answer = verify_audit_round(client, busy_wait=0.0, max_busy=2)  # type: ignore[arg-type]
    assert answer["calls"] == 2 and answer["round_complete"]
