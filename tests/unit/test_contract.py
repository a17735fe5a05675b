"""The published contract as the ecosystem's own tools read it: the official AsyncAPI parser,
JSON Schema 2020-12 validation of every message example, and promtool on the alert rules."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from pydantic import TypeAdapter

from schemas import generate
from schemas.account_events import ACCOUNT_EVENT_ADAPTER
from schemas.balances import Balance
from schemas.dlq import DeadLetter
from schemas.invoices import Invoice
from schemas.reminders import Reminder
from schemas.usage import UsageEvent

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
ASYNCAPI = SCHEMAS / "asyncapi.yaml"
PARSER = ROOT / "tools" / "asyncapi"
ALERTS = ROOT / "deploy" / "prometheus"
INSTALL_HINT = "`make tools` installs it (`make test` does so first)"

# The pydantic model each message is decoded or encoded with, as a second reader.
MODELS: dict[str, TypeAdapter[Any]] = {
    "UsageEvent": TypeAdapter(UsageEvent),
    "AccountEvent": ACCOUNT_EVENT_ADAPTER,
    "Reminder": TypeAdapter(Reminder),
    "Invoice": TypeAdapter(Invoice),
    "DeadLetter": TypeAdapter(DeadLetter),
    "Balance": TypeAdapter(Balance),
}


def _document() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    return doc


def _payload_schema(message: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / message["payload"]["$ref"]).read_text())
    return schema


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_the_official_asyncapi_parser_reports_no_errors() -> None:
    node = shutil.which("node")
    assert node is not None, "node is not installed"
    assert (PARSER / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        f"@asyncapi/parser is not installed in {PARSER}: {INSTALL_HINT}"
    )
    done = _run(node, str(PARSER / "check.mjs"), str(ASYNCAPI))
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    errors = [d for d in lines if d.get("severity") == 0]
    assert done.returncode == 0, done.stderr + done.stdout
    assert errors == []
    assert lines[-1] == {"parsed": True, "errors": 0}


def test_every_message_has_an_example_that_validates_against_its_own_payload_schema() -> None:
    messages = _document()["components"]["messages"]
    assert set(messages) == set(MODELS)
    for name, message in messages.items():
        validator = _validator(_payload_schema(message))
        examples = message.get("examples") or []
        assert examples, f"{name} has no example"
        for example in examples:
            errors = [e.message for e in validator.iter_errors(example["payload"])]
            assert errors == [], f"{name}/{example['name']}: {errors}"
            MODELS[name].validate_python(example["payload"])


def test_the_account_event_examples_cover_every_type() -> None:
    message = _document()["components"]["messages"]["AccountEvent"]
    schema = _payload_schema(message)
    types = {branch["properties"]["type"]["const"] for branch in schema["$defs"].values()}
    assert types == {
        "account_opened",
        "credits_purchased",
        "reminder_configured",
        "switched_to_postpay",
        "invoice_paid",
    }
    assert {e["payload"]["type"] for e in message["examples"]} == types


def test_example_validation_rejects_what_the_schema_forbids() -> None:
    """The validation above is not vacuous: formats, consts and the discriminated union bite."""
    messages = _document()["components"]["messages"]
    usage = _validator(_payload_schema(messages["UsageEvent"]))
    good = messages["UsageEvent"]["examples"][0]["payload"]
    assert usage.is_valid(good)
    assert not usage.is_valid({**good, "occurred_at": "yesterday"})
    assert not usage.is_valid({**good, "destination": "090-1234-5678"})
    events = _validator(_payload_schema(messages["AccountEvent"]))
    purchase = messages["AccountEvent"]["examples"][1]["payload"]
    assert events.is_valid(purchase)
    assert not events.is_valid({**purchase, "type": "credits_gifted"})
    assert not events.is_valid({k: v for k, v in purchase.items() if k != "purchase_id"})


@pytest.mark.parametrize("topic", sorted(generate.TOPICS))
def test_generated_schemas_are_valid_draft_2020_12(topic: str) -> None:
    schema = json.loads(generate.render(topic))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"{topic}: {exc.message}")


def test_generated_discriminators_are_property_names() -> None:
    """AsyncAPI 3 Schema Objects take the discriminator as a property name string."""

    def discriminators(node: Any) -> list[Any]:
        if isinstance(node, dict):
            own = [node["discriminator"]] if "discriminator" in node else []
            return own + [d for value in node.values() for d in discriminators(value)]
        if isinstance(node, list):
            return [d for value in node for d in discriminators(value)]
        return []

    found = [
        d for topic in generate.TOPICS for d in discriminators(json.loads(generate.render(topic)))
    ]
    assert found == ["type"]


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, f"promtool is not installed: {INSTALL_HINT}"
    check = _run(promtool, "check", "rules", str(ALERTS / "alerts.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    rules = yaml.safe_load((ALERTS / "alerts.yml").read_text(encoding="utf-8"))["groups"][0]
    assert f"SUCCESS: {len(rules['rules'])} rules found" in check.stdout
    tests = (ALERTS / "alerts_test.yml").read_text(encoding="utf-8")
    for rule in rules["rules"]:  # every rule is tested, firing and not firing
        assert tests.count(f"alertname: {rule['alert']}") >= 2, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])
        assert "Runbook:" in rule["annotations"]["description"]
    tested = _run(promtool, "test", "rules", str(ALERTS / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
