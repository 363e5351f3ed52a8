"""Status files written off the hot loop (relay/status.py StatusWriter)."""

from __future__ import annotations

import os

from relay.status import StatusWriter, read_status
from tests.support import wait_for


def test_documents_land_atomically_latest_wins_and_close_flushes(tmp_path) -> None:
    path = str(tmp_path / "status-ingress.json")
    writer = StatusWriter(path)
    try:
        writer.submit({"n": 1})
        wait_for(lambda: read_status(path) == {"n": 1}, 5, what="first document written")
        for n in range(2, 200):
            writer.submit({"n": n, 3: "non-str key"})
    finally:
        writer.close()
    # After close the last document is on disk, whole; nothing else is left behind.
    assert read_status(path) == {"n": 199, "3": "non-str key"}
    assert os.listdir(tmp_path) == ["status-ingress.json"]
    assert writer.failures == 0 and writer.replaced <= 198


def test_a_write_that_fails_is_counted_and_the_next_one_succeeds(tmp_path) -> None:
    missing = tmp_path / "gone"
    path = str(missing / "status-shard-0.json")
    writer = StatusWriter(path)
    try:
        writer.submit({"n": 1})
        wait_for(lambda: writer.failures == 1, 5, what="failure counted")
        missing.mkdir()
        writer.submit({"n": 2})
        wait_for(lambda: read_status(path) == {"n": 2}, 5, what="later document written")
    finally:
        writer.close()
