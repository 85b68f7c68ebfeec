#!/usr/bin/python3
"""Parses an OpenMetrics exposition from the file named by the first argument
(or stdin) with the Prometheus project's
own Python parser (Debian's python3-prometheus-client) and prints it as JSON:
a list of families {name, type, unit, samples: [{name, labels, value}]}.
The parser is strict (types, units, _total suffixes, histogram buckets in
order and cumulative, _count equal to the +Inf bucket, # EOF): any violation
exits non-zero with its message on stderr. dtu's end-to-end tests use it as
an independent check of what `/metrics` serves."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    if len(sys.argv) > 1:
        with open(sys.argv[1], encoding="utf-8") as f:
            text = f.read()
    else:
        text = sys.stdin.read()
    families = []
    for f in text_string_to_metric_families(text):
        families.append(
            {
                "name": f.name,
                "type": f.type,
                "unit": f.unit,
                "samples": [
                    {"name": s.name, "labels": s.labels, "value": s.value}
                    for s in f.samples
                ],
            }
        )
    json.dump(families, sys.stdout)


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        print(f"not valid OpenMetrics: {e}", file=sys.stderr)
        sys.exit(1)
