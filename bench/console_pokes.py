"""Benchmark: what a console poke costs the writer (a webhook's thread), per row written and per commit.

Every write of a call, a transcript line or a stream row registers `changed()` on the transaction;
after the commit, `poke()` sets a flag and, at most once per POKE_INTERVAL, hands a send to the
event loop. Measured here in-process on SQLite, as CPU time of the writing thread, with an event loop bound as a serving gateway's is:
the transaction hook with its poke after the commit, the poke when a send is already pending (the common case in a burst),
the poke that hands off (call_soon_threadsafe), and a whole small transaction with and without the hook.
Run: `.venv/bin/python bench/console_pokes.py [--n 100000]`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_call_ns(func, n: int) -> float:
    """CPU time of this thread per call: the writer's own cost, whatever else the machine runs."""
    started = time.thread_time_ns()
    for _ in range(n):
        func()
    return (time.thread_time_ns() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voicecall_project.settings")
    os.environ.setdefault("VOICECALL_DATA_DIR", tempfile.mkdtemp(prefix="voicecall-bench-"))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from calls.console import pokes
    from calls.gateway import get_gateway
    from calls import models
    from calls.models import Call

    call_command("migrate", verbosity=0)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    get_gateway().bind_loop(loop)  # as a serving gateway's streams and consoles bind it

    def transactions(hooks: int):
        def run():
            with transaction.atomic():
                for _ in range(hooks):  # a webhook writes a few rows
                    pokes.changed()
        return run

    baseline = per_call_ns(transactions(0), args.n // 5)
    hook = (per_call_ns(transactions(5), args.n // 5) - baseline) / 5  # registered on the open transaction,
    # and the poke it makes after the commit (coalesced: a send is pending most of the time)
    pokes.poker.pending = True
    pending = per_call_ns(pokes.poke, args.n)  # a send already pending: the flag only
    pokes.poker.pending = False

    def handoff():
        pokes.poker.pending = False  # as if the last send had just gone
        pokes.poke()

    handed = per_call_ns(handoff, args.n // 10)
    call = Call.objects.create(provider="mock", direction="inbound", from_number="+15550000000", to_number="+15550000001")

    def write():
        with transaction.atomic():
            Call.objects.filter(pk=call.pk).update(turn_count=1)
            Call.objects.filter(pk=call.pk).update(turn_count=2)

    rounds = max(1000, args.n // 50)
    hooked, unhooked = [], []
    for _ in range(5):  # alternated, the best of five each: the machine's other work moves both
        models.changed = pokes.changed
        hooked.append(per_call_ns(write, rounds))
        models.changed = lambda: None  # the same writes, poking nobody
        unhooked.append(per_call_ns(write, rounds))
    models.changed = pokes.changed
    with_hook, without_hook = min(hooked), min(unhooked)
    print(f"changed() inside a transaction, with its poke after the commit: {hook / 1000:.2f} µs")
    print(f"poke() with a send pending (coalesced): {pending / 1000:.2f} µs")
    print(f"poke() handing a send to the loop: {handed / 1000:.2f} µs")
    print(f"a transaction updating a call twice: {with_hook / 1000:.1f} µs with the hook, {without_hook / 1000:.1f} µs without")
    print(f"sends made: {pokes.poker.sent} (at most one per {pokes.POKE_INTERVAL} s)")


if __name__ == "__main__":
    main()
