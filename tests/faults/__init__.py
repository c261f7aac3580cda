"""Fault injection with real processes: a gateway killed, its providers dropping or stalling, its database connections cut."""
