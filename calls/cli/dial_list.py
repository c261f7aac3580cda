"""`voicecall dial-list FILE`: store a CSV dial list, print its id and bad rows, and with --wait follow its progress.

The list is written to the shared database; the running gateway's sweeper (Celery beat in the
distributed mode) admits its rows. When no gateway answers, `--wait` admits them from here,
as the other commands run standalone.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db import connections


def dial_list_run(
    path: Path, *, name: str, wait: bool, poll_ms: int, out: Callable[[Any], None], note: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    from calls import services
    from calls.cli.gateway import GatewayError, GatewayUnreachable, rpc_call
    from calls.dial_progress import dial_list_progress

    dial_list = services.dial_list_create(name=name, data=path.read_bytes())
    progress = dial_list_progress(dial_list=dial_list)
    out({
        **progress.as_dict(),
        "refused": [{"row": row.row, "error": row.detail} for row in progress.rows if row.status == "refused"],
    })
    try:
        rpc_call("voicecall.status", {})
        standalone = False
    except GatewayUnreachable as exc:
        standalone = True
        if not wait:
            note(f"voicecall: {exc}; the rows are dialed once a gateway runs (or add --wait to dial them from here)")
    except GatewayError:
        standalone = False  # a gateway answers (perhaps with a token this CLI lacks): it admits the rows
    if not wait:
        return
    last = None
    while True:
        if standalone:
            services.dials_advance()
        progress = dial_list_progress(dial_list=dial_list)
        if progress.counts != last:
            last = progress.counts
            out({"progress": progress.counts})
        if progress.settled:
            break
        connections.close_all()  # no transaction or connection held open between looks
        sleep(poll_ms / 1000)
    out({
        **progress.as_dict(),
        "rows": [
            {"row": row.row, "to": row.to, "outcome": row.status, **({"detail": row.detail} if row.detail else {}),
             **({"callId": row.call_id} if row.call_id else {})}
            for row in progress.rows
        ],
    })
