"""Reading GET /metrics in tests: the body parsed with prometheus_client's own parser into {(sample, labels): value}."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(body: str) -> Samples:
    """Every sample of a Prometheus text body, keyed by its name and its sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a labelled counter appears with its first increment)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def families(body: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(body)}
