"""Runs inside CloudKitty's own venv (see tests/cloudkitty/test_cloudkitty.py).

``probe.py validate METRICS_YML``: load and validate the file with CloudKitty's
own code (``cloudkitty.utils.load_conf``, ``cloudkitty.collector.validate_conf``
with the Prometheus collector) and print the validated configuration as JSON.

``probe.py collect METRICS_YML PROMETHEUS_URL PROJECT START END``: collect
with CloudKitty's PrometheusCollector, hour by hour from START to END (ISO),
and print ``[{"begin", "end", "instance_id", "host", "qty"}]`` as JSON.
"""

import datetime as dt
import json
import sys

from cloudkitty import collector
from cloudkitty import utils as ck_utils
from oslo_config import cfg


def configure(url: str = "") -> None:
    cfg.CONF([], project="cloudkitty", default_config_files=[])
    cfg.CONF.set_override("collector", "prometheus", "collect")
    cfg.CONF.set_override("period", 3600, "collect")
    cfg.CONF.set_override("scope_key", "project_id", "collect")
    if url:
        from cloudkitty.collector import prometheus  # noqa: F401 - registers its options

        cfg.CONF.set_override("prometheus_url", url, "collector_prometheus")


def validated(path: str) -> dict:
    conf = ck_utils.load_conf(path)
    return collector.validate_conf(conf)


def main(argv: list[str]) -> int:
    command, path = argv[1], argv[2]
    if command == "validate":
        configure()
        print(json.dumps(validated(path), default=str, sort_keys=True))
        return 0
    url, project, start, end = argv[3:7]
    configure(url)
    # As CloudKitty's processor does: the configured collector, on metrics_conf.
    cfg.CONF.set_override("metrics_conf", path, "collect")
    coll = collector.get_collector()
    conf = coll.conf
    out = []
    begin = dt.datetime.fromisoformat(start)
    stop = dt.datetime.fromisoformat(end)
    while begin < stop:
        hour_end = begin + dt.timedelta(hours=1)
        for metric in conf:
            _name, points = coll.retrieve(metric, begin, hour_end, project)
            for point in points:
                out.append(
                    {
                        "begin": begin.isoformat(),
                        "end": hour_end.isoformat(),
                        "instance_id": point.groupby["instance_id"],
                        "project_id": point.groupby["project_id"],
                        "host": point.metadata["host"],
                        "qty": str(point.qty),
                        "unit": point.unit,
                    }
                )
        begin = hour_end
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
