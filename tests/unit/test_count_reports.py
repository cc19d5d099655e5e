"""Camera count reports as the coordinator receives them: only from the attempt holding the lease,
malformed ones ignored, kept in memory while the store is down."""

from __future__ import annotations

from pathlib import Path

from clusterai.errors import StoreUnavailable
from clusterai.head.camera_counts import CountCollector
from clusterai.store.sqlite import SQLiteStore


def report(job: int, attempt: int, frame: int, total: int) -> tuple[float, dict]:
    return (0.0, {"job_id": job, "attempt": attempt, "camera": "gate", "frame": frame, "video_time": frame / 15,
                  "at": 1000.0 + frame, "total": total, "left_to_right": total, "right_to_left": 0})


def test_reports_from_the_lease_holder_only_and_malformed_ones_ignored(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    current = {7: 2}
    collector = CountCollector(store, lambda job, attempt: current.get(job) == attempt)
    collector.on_event(report(7, 2, 30, 1))
    collector.on_event(report(7, 1, 45, 9))  # a lost attempt, late
    collector.on_event(report(8, 1, 30, 9))  # a job this coordinator does not run
    collector.on_event((0.0, {"job_id": 7, "attempt": 2, "frame": "x"}))
    collector.on_event((0.0, "not a mapping"))
    assert [(p.frame, p.total) for p in store.list_count_points()] == [(30, 1)]
    store.close()


def test_reports_wait_in_memory_while_the_store_is_down(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    real = store.add_count_points
    down = True

    def add_count_points(points):  # type: ignore[no-untyped-def]
        if down:
            raise StoreUnavailable("down")
        real(points)

    store.add_count_points = add_count_points  # type: ignore[method-assign]
    collector = CountCollector(store, lambda job, attempt: True)
    collector.on_event(report(7, 1, 30, 1))
    collector.on_event(report(7, 1, 60, 2))
    assert store.list_count_points() == []
    down = False
    collector.flush()
    assert [p.total for p in store.list_count_points()] == [1, 2]
    store.close()
