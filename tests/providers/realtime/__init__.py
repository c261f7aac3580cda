"""Realtime voice providers."""
