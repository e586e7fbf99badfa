"""Privacy controls of the engine: k-anonymity suppression, differential
privacy noise (OpenDP), the persisted budget ledger and released-answer
cache, and the differencing check over released cohorts."""

from sgxcloud.cleanroom.privacy.differencing import CohortStore, Release
from sgxcloud.cleanroom.privacy.dp import NoiseSource
from sgxcloud.cleanroom.privacy.ledger import PrivacyLedger
from sgxcloud.cleanroom.privacy.suppression import complementary_suppression

__all__ = ["CohortStore", "NoiseSource", "PrivacyLedger", "Release", "complementary_suppression"]
