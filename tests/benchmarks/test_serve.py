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


def test_the_paged_report_renders_every_point_and_the_memory_table():
    script = load_script("serve")
    report = json.loads((RESULTS / "serve_paged.json").read_text())
    text = script.paged_markdown(report)
    tasks = report["config"]["tasks"]
    assert text.count(f"| {tasks} tasks |") == 2 and text.count("| 8 tasks |") == 2
    assert f"{report['config']['resident']} fine-tuned copies" in text
    assert "python benchmarks/serve.py --many-tasks" in text


def test_zipf_weights_and_a_check_of_sampled_pairs_only():
    script = load_script("serve")
    w = script.zipf(4, 1.1)
    assert w[0] == 1 and abs(w[0] / w[1] - 2**1.1) < 1e-12 and w == sorted(w, reverse=True)
    body = json.dumps(
        {"results": [{"tasks": {"t": {"top": [{"index": 1, "prob": 0.9, "label": "t-class1"}]}}}]}
    ).encode()
    metrics = 'adaptformer_requests_total{status="200"} 2.0\n'
    run = {
        "order": [(0, "t"), (1, "t")],
        "answers": {0: [(200, body, 0.1)], 1: [(200, body, 0.2)]},
        "wall": 1.0,
        "before": "",
        "after": metrics,
    }
    point = script.check([run], {(0, "t"): ([1], [0.9])})
    assert point["top5_checked"] == 1 and point["top5_mismatches"] == 0
    assert point["answered_exactly_once"] and point["images_per_s"] == 2.0
    wrong = script.check([run], {(0, "t"): ([2], [0.9])})
    assert wrong["top5_mismatches"] == 1
