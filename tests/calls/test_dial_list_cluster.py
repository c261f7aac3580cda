"""A dial list on a real cluster: 100 rows under a 5 calls-per-second limit, dialed by two Celery workers at or under the limit."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.cluster import distributed, make_cluster  # noqa: F401 (a fixture)
from tests.paths import ROOT
from tests.waiting import wait_until

pytestmark = distributed

ROWS = 100
CPS = 5
JITTER = 0.25


def test_a_hundred_rows_are_dialed_at_or_under_the_rate_limit_and_every_row_is_accounted_for(make_cluster, tmp_path):
    # Lines for every row at once: the rate limit, not maxConcurrentCalls, is what paces this list.
    cluster = make_cluster(config={"maxConcurrentCalls": 200, "mock": {"callsPerSecond": CPS}}, nodes=1, workers=2)
    good = [f"+1555010{i:04d},Hello {i}\n" for i in range(ROWS)]
    # Two bad rows among them: reported by row number, skipped, the rest dialed.
    rows = good[:10] + ["5550100,no plus sign\n", "+15550109999,\n"] + good[10:]
    path = tmp_path / "hundred.csv"
    path.write_text("to,message\n" + "".join(rows))

    done = subprocess.run(
        [sys.executable, "manage.py", "voicecall", "dial-list", str(path)], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**cluster.env, "VOICECALL_GATEWAY_URL": cluster.base},
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    list_id = created["dialListId"]
    assert [(row["row"], row["error"][:4]) for row in created["refused"]] == [(12, "to: "), (13, "mess")]

    def dialed() -> int:
        return cluster.rows(
            "SELECT count(*) FROM calls_call c JOIN calls_pendingdial d ON d.id = c.id"
            " WHERE d.dial_list_id = %s AND c.dialed_at IS NOT NULL", (list_id,),
        )[0][0]

    # 100 dials at 5 a second take 20 s; the bound is for a busy machine.
    wait_until(lambda: dialed() == ROWS, f"{ROWS} rows dialed", timeout=ROWS / CPS * 4 + 30, interval=0.5)

    statuses = dict(cluster.rows(
        "SELECT status, count(*) FROM calls_pendingdial WHERE dial_list_id = %s GROUP BY status", (list_id,),
    ))
    assert statuses == {"admitted": ROWS, "rejected": 2}
    assert cluster.rows("SELECT rows_total, rows_rejected FROM calls_diallist WHERE id = %s", (list_id,)) == [(ROWS + 2, 2)]
    # One call per row, each dialed once, to its own number.
    calls = cluster.rows(
        "SELECT c.to_number, c.dial_attempts, c.dial_requested_at FROM calls_call c JOIN calls_pendingdial d ON d.id = c.id"
        " WHERE d.dial_list_id = %s ORDER BY c.dial_requested_at", (list_id,),
    )
    assert sorted(to for to, _, _ in calls) == sorted(row.split(",")[0] for row in good)
    assert {attempts for _, attempts, _ in calls} == {1}
    assert cluster.rows("SELECT count(*) FROM calls_call") == [(ROWS,)]

    # At or under the limit over every stretch of the run: any k+1 consecutive dials span at least k / CPS
    # seconds (one second's worth, five seconds' worth, the whole list). A dial's time is its request's
    # mark, written right after its slot was granted (not the carrier's answer, which a busy worker may
    # stamp much later); JITTER allows for the write itself.
    assert all(requested is not None for _, _, requested in calls)
    times = sorted(requested for _, _, requested in calls)
    for k in (CPS, 5 * CPS, ROWS - 1):
        tightest = min((times[i + k] - times[i]).total_seconds() for i in range(len(times) - k))
        assert tightest >= k / CPS - JITTER, f"{k + 1} dials within {tightest:.2f} s (at {CPS} per second: {k / CPS:.1f} s)"
