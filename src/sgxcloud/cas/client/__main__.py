"""``python -m sgxcloud.cas.client launch`` (see :mod:`sgxcloud.cas.client.launcher`)."""

import sys

from sgxcloud.cas.client.launcher import main

sys.exit(main())
