"""The carrier simulator: plays Twilio's side of phone calls against a running gateway.

It sends signed voice webhooks, follows the TwiML to the media stream, speaks a caller script
as real-time 20 ms μ-law frames made with the offline TTS, plays back what the gateway sends as
Twilio would (a real-time buffer that echoes marks and honours `clear`), transcribes what it
heard with the offline STT, and answers the gateway's REST requests (hang-up, status). Tests,
benchmarks and demos use it; `manage.py voicecall simulate` runs it from the shell.
"""
