"""Prometheus metrics: what each process records (recorders), what the database says at scrape time (database), GET /metrics (view), and the multiprocess directory (multiproc)."""
