"""Fault injection with real gateway processes: kill -9, carriers that stall or fail, restarts."""
