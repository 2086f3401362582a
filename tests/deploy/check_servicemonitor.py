"""Validates ServiceMonitor manifests against prometheus-operator's CRD schema.

kubernetes-validate knows only built-in kinds (it merely warns about a ServiceMonitor), so
tests/deploy.rs runs this instead: the cloudcoil models are generated from the CRD's
openAPIV3Schema and check types, enums and patterns; a field the schema does not know is
silently dropped by them, so the document is compared with what the model kept.

Usage: check_servicemonitor.py FILE...   (exit 1 with the reasons when one is invalid)
"""

import sys

import pydantic
import yaml
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor


def unknown_fields(given, kept, path=""):
    """Paths present in `given` but missing from `kept`."""
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            if key not in kept:
                yield where
            else:
                yield from unknown_fields(value, kept[key], where)
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (a, b) in enumerate(zip(given, kept)):
            yield from unknown_fields(a, b, f"{path}[{i}]")


def check(path):
    problems = []
    with open(path, encoding="utf-8") as f:
        documents = [d for d in yaml.safe_load_all(f) if d is not None]
    if not documents:
        problems.append("no document")
    for doc in documents:
        if doc.get("kind") != "ServiceMonitor":
            problems.append(f"kind is {doc.get('kind')!r}, not ServiceMonitor")
            continue
        try:
            model = ServiceMonitor.model_validate(doc)
        except pydantic.ValidationError as e:
            problems.append(str(e))
            continue
        kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        problems += [f"{p}: not in the ServiceMonitor schema" for p in unknown_fields(doc, kept)]
    return problems


def main():
    failed = False
    for path in sys.argv[1:]:
        problems = check(path)
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        if problems:
            failed = True
        else:
            print(f"{path}: valid ServiceMonitor")
    sys.exit(1 if failed or len(sys.argv) < 2 else 0)


if __name__ == "__main__":
    main()
