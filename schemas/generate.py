"""Write the JSON Schema of every topic to schemas/json/ (`--check`: fail when stale)."""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from schemas._types import InputModel, OutputModel
from schemas.account_events import ACCOUNT_EVENT_ADAPTER
from schemas.balances import Balance
from schemas.dlq import DeadLetter
from schemas.invoices import Invoice
from schemas.reminders import Reminder
from schemas.usage import UsageEvent

JSON_DIR = Path(__file__).resolve().parent / "json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _input(model: type[InputModel]) -> Callable[[], dict[str, Any]]:
    return lambda: model.model_json_schema(mode="validation")


def _output(model: type[OutputModel]) -> Callable[[], dict[str, Any]]:
    return lambda: model.model_json_schema(mode="serialization")


def _account_events() -> dict[str, Any]:
    schema = ACCOUNT_EVENT_ADAPTER.json_schema(mode="validation")
    schema["title"] = "AccountEvent"
    schema["description"] = "An account or payment event; `type` selects the shape."
    return schema


# Default topic names (each is configurable with BILLING_TOPIC_*) and their message schema.
TOPICS: dict[str, Callable[[], dict[str, Any]]] = {
    "sms.usage.v1": _input(UsageEvent),
    "billing.account-events.v1": _account_events,
    "billing.reminders.v1": _output(Reminder),
    "billing.invoices.v1": _output(Invoice),
    "billing.dlq.v1": _output(DeadLetter),
    "billing.balances.v1": _output(Balance),
}


def portable(schema: Any) -> Any:
    """The schema with every OpenAPI-style discriminator object reduced to its property name.

    pydantic writes `{"propertyName": ..., "mapping": ...}`; AsyncAPI 3 Schema Objects only
    accept the property name as a string, and JSON Schema 2020-12 ignores the keyword either
    way. The `oneOf` branches already pin that property with `const`, so nothing is lost.
    """
    if isinstance(schema, list):
        return [portable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: portable(value) for key, value in schema.items()}
    discriminator = out.get("discriminator")
    if isinstance(discriminator, dict):
        out["discriminator"] = discriminator["propertyName"]
    return out


def render(topic: str) -> str:
    """The JSON Schema document for a topic, byte-for-byte deterministic."""
    schema = {"$schema": DIALECT, **portable(TOPICS[topic]())}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    """File name → content of every schema file that should be in schemas/json/."""
    return {f"{topic}.json": render(topic) for topic in TOPICS}


def stale_files(directory: Path = JSON_DIR) -> list[Path]:
    """Schema files that are missing or differ from what the models generate."""
    stale = []
    for name, content in expected_files().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            stale.append(path)
    return stale


def write(directory: Path = JSON_DIR) -> list[Path]:
    """Write every schema file whose content changed; return those written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for path in stale_files(directory):
        path.write_text(expected_files()[path.name], encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a file is missing or out of date"
    )
    parser.add_argument("--dir", type=Path, default=JSON_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.dir)
        for path in stale:
            print(f"stale: {path} (run: python -m schemas.generate)", file=sys.stderr)
        return 1 if stale else 0
    for path in write(args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
