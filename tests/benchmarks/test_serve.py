"""benchmarks/serve.py: the report says how quiet the machine was, and the load share is sane."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .conftest import load_script

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_the_report_names_the_other_processes_share_of_the_cpu():
    script = load_script("serve")
    report = json.loads((RESULTS / "serve.json").read_text())
    report["machine"]["others_cpu"] = 0.05
    assert "2 cores (other processes used 5% of them during the run)" in script.markdown(
        {**report, "machine": {**report["machine"], "nproc": 2}}
    )
    del report["machine"]["others_cpu"]
    assert "(other load not recorded)" in script.markdown(report)


def test_other_load_is_a_share_and_leaves_out_this_process():
    script = load_script("serve")
    load = script.OtherLoad()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:  # this process's own work must not count as "other"
        pass
    assert 0.0 <= load.share() <= 1.0
