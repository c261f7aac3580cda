"""Tunnels that put the gateway's local listener on a public URL: ngrok (its SDK) and Tailscale serve/funnel (its CLI)."""
