"""Daphne's HTTP requests without Twisted's own parse of form bodies, which nothing reads."""
from __future__ import annotations


def skip_form_parsing() -> None:
    """Every Twilio webhook is a form POST. Twisted parses such bodies into `request.args` (its
    Content-Type parse goes through the email package, slow) before Daphne hands the raw body to
    the ASGI app, which parses it again. Daphne never reads `args`, so the first parse is skipped.
    """
    from daphne.http_protocol import WebRequest

    if getattr(WebRequest, "_form_parsing_skipped", False):
        return
    original = WebRequest.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False  # Twisted's switch for exactly this parse

    WebRequest.__init__ = init
    WebRequest._form_parsing_skipped = True
