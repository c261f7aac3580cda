"""A PocketSphinx decoder in its own process, driven over a pipe.

PocketSphinx keeps the GIL while it decodes, so in the gateway's process it would stall the
event loop that paces every call's audio. In a worker process it runs beside the loop (and on
another core). The worker takes μ-law 8 kHz, resamples to 16 kHz with carried state, and answers
each request with the current hypothesis.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

DECODE_RATE = 16000


def serve(conn: Connection, cmn: str) -> None:
    """The worker's loop: ("start",) · ("audio", ulaw, want_partial) · ("end",) · ("quit",)."""
    from pocketsphinx import Decoder

    from core.audio import TelephonyDecoder

    decoder = Decoder(loglevel="FATAL", cmninit=cmn)
    upsampler = TelephonyDecoder(DECODE_RATE)
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        try:
            kind = message[0]
            if kind == "start":
                # Each utterance starts from the telephony means, so calls never affect each other.
                decoder.set_cmn(cmn)
                upsampler = TelephonyDecoder(DECODE_RATE)
                decoder.start_utt()
                conn.send(("ok",))
            elif kind == "audio":
                pcm = upsampler.decode(message[1])
                if pcm:  # the resampler gives its output in bursts, often nothing for a batch
                    decoder.process_raw(pcm, no_search=False, full_utt=False)
                hyp = decoder.hyp() if message[2] else None
                conn.send(("partial", hyp.hypstr if hyp is not None else ""))
            elif kind == "end":
                # the resampler holds back tens of ms; the utterance's last sounds are in it
                tail = upsampler.flush()
                if tail:  # PocketSphinx refuses an empty buffer
                    decoder.process_raw(tail, no_search=False, full_utt=False)
                decoder.end_utt()
                hyp = decoder.hyp()
                conn.send(("final", hyp.hypstr.strip() if hyp is not None else ""))
            elif kind == "quit":
                return
        except Exception as exc:  # reported to the session, which drops this worker
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class SphinxWorker:
    """The parent's handle on one worker process; its methods block (call them from a thread)."""

    def __init__(self, cmn: str) -> None:
        # A fresh interpreter running this module: never fork a threaded server, and never
        # re-import the parent's main module as multiprocessing's spawn would.
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "providers.transcription.sphinx_worker", str(child.fileno()), cmn],
            pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL,
        )
        child.close()
        self.conn = Connection(parent.detach())
        self._lock = threading.Lock()
        reply = self._receive(timeout=60)
        if reply[0] != "ready":
            raise RuntimeError(f"the decoder process did not start: {reply}")

    def _receive(self, timeout: float = 30) -> tuple:
        if not self.conn.poll(timeout):
            raise TimeoutError("the decoder process did not answer")
        reply = self.conn.recv()
        if reply[0] == "error":
            raise RuntimeError(reply[1])
        return reply

    def request(self, *message) -> tuple:
        with self._lock:
            self.conn.send(message)
            return self._receive()

    def close(self) -> None:
        try:
            self.conn.send(("quit",))
        except (OSError, ValueError):
            pass
        try:
            self.process.wait(2)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.conn.close()


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])), sys.argv[2])
