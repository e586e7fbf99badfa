"""Smoke test of benchmarks/bench_hot_routes.py: a few requests each way, sane figures.

Not a timed test: nothing here asserts how fast anything is.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_hot_routes.py"


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_hot_routes", SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_every_way_and_request_is_measured(capsys) -> None:  # type: ignore[no-untyped-def]
    assert _bench().main(["--requests", "20", "--repeat", "1", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    ways = ("asgi_direct", "asgi_stack", "protocol")
    assert set(figures) == {f"{w}_{r}_us" for w in ways for r in ("nonce", "attest")}
    assert all(math.isfinite(v) and v > 0 for v in figures.values())


def test_bad_arguments_are_one_line_and_exit_2(capsys) -> None:  # type: ignore[no-untyped-def]
    assert _bench().main(["--requests", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
