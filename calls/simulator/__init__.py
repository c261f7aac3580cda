"""The carrier simulator: plays Twilio's, Telnyx's or Plivo's side of phone calls against a running gateway.

Inbound, it sends the carrier's signed webhooks (Twilio's and Plivo's HMAC, Telnyx's Ed25519) and
follows the answer to the media stream (TwiML's <Connect><Stream>, Telnyx's answer command, Plivo's
<Stream>); outbound, it is the carrier's REST API the gateway dials through, and the callee answers.
On the stream it speaks a caller script as real-time 20 ms μ-law frames in the carrier's own frame
format, made with the offline TTS, plays back what the gateway sends as the carrier would (a
real-time buffer that echoes marks and honours clears), transcribes what it heard with the offline
STT, and answers the gateway's REST requests (answer, hang-up, status). Tests, benchmarks and demos
use it; `manage.py voicecall simulate` runs it from the shell.
"""
