"""What every tunnel driver raises: one error whose message names the problem for the person reading setup."""
from __future__ import annotations


class TunnelError(Exception):
    """The tunnel could not be started, stopped or asked (the message says why, without secrets)."""
