"""`relayctl scale` / `relayctl reload`: argument checks, the request they
leave, and a real node that refuses to move rooms it keeps in memory only."""

from __future__ import annotations

import os
import subprocess

import orjson
import pytest

from relay.histogram import LatencyHistogram
from relay.metrics import NodeCollector
from relay.status import write_status
from supervisor.arbiter import SCALE_REQUEST
from supervisor.cli import main
from tests.support import RELAYCTL, REPO, RelayNode, wait_for

pytestmark = pytest.mark.timeout(90)


def relayctl(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(RELAYCTL + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("n", ["0", "65", "-1"])
def test_scale_out_of_range_exits_2_with_a_message(n, tmp_path, capsys) -> None:
    assert main(["scale", n, "--run-dir", str(tmp_path)]) == 2
    assert "between 1 and 64" in capsys.readouterr().err


def test_scale_not_a_number_exits_2(tmp_path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["scale", "many", "--run-dir", str(tmp_path)])
    assert exc.value.code == 2


def test_scale_and_reload_without_a_node_fail_clearly(tmp_path, capsys) -> None:
    assert main(["scale", "2", "--run-dir", str(tmp_path)]) == 1
    assert main(["reload", "--run-dir", str(tmp_path)]) == 1
    assert "no running relay found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / SCALE_REQUEST)


def test_memory_only_node_takes_the_request_and_refuses_it() -> None:
    with RelayNode(shards=1, store="", extra_args=["--no-data-dir"]) as node:
        asked = relayctl("scale", "2", "--run-dir", node.run_dir)
        assert asked.returncode == 0, asked.stderr
        assert "scale to 2 shards" in asked.stdout
        wait_for(lambda: (node.supervisor_state() or {}).get("last_refused"), 10, what="refusal")
        assert not os.path.exists(os.path.join(node.run_dir, SCALE_REQUEST))
        waited = relayctl("scale", "2", "--wait", "--run-dir", node.run_dir)
        assert waited.returncode == 1 and "memory only" in waited.stderr, waited.stderr
        reload = relayctl("reload", "--wait", "--run-dir", node.run_dir)
        assert reload.returncode == 1 and "refused" in reload.stderr, reload.stderr
        state = node.supervisor_state()
        assert state["shards"] == 1 and state["slots"] == [0]
        assert state["children"]["shard-0"]["incarnation"] == 0
        assert "refused" in node.log_text()
        table = relayctl("status", "--run-dir", node.run_dir)
        for heading in ("DEVICES", "HELD", "HANDED OVER", "RESTARTS"):
            assert heading in table.stdout, table.stdout


def test_collector_exports_handovers_and_their_wait(tmp_path) -> None:
    wait = LatencyHistogram()
    wait.observe(0.03)
    wait.observe(0.3)
    run_dir = str(tmp_path)
    write_status(os.path.join(run_dir, "supervisor.json"), {"shards": 2, "children": {}})
    write_status(os.path.join(run_dir, "status-shard-1.json"),
                 {"pid": 1, "rooms_handed_over": 4, "handovers": {"released": 4}, "handover_wait": wait.to_dict()})
    collector = NodeCollector(run_dir, proxy_timeout_ms=10)
    try:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in collector.collect() for s in fam.samples}
    finally:
        collector.close()
    assert samples[("relay_shards", ())] == 2
    assert samples[("relay_rooms_handed_over_total", (("shard", "1"),))] == 4
    assert samples[("relay_handover_wait_seconds_count", ())] == 2
    assert samples[("relay_handover_wait_seconds_bucket", (("le", "0.05"),))] == 1
    assert orjson.dumps(samples[("relay_handover_wait_seconds_sum", ())])
