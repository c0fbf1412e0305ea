"""The domain definition: what a mistake in a domain.toml gives (an error naming the file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvonce_pipeline.engine.domain import Domain, load_definition
from kvonce_pipeline.engine.errors import ConfigError

GOOD = """
name = "shop"
label = "Shop"
prefix = "shop.event."
schema_version = "shop-validation/v1"
[[types]]
name = "buy"
required = ["amount"]
[[fields]]
name = "amount"
json = ["number"]
[[rules]]
id = "too-much"
severity = "error"
summary = "bought too much"
[[options]]
name = "limit"
type = "integer"
default = 5
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "domain.toml"
    path.write_text(text)
    return path


def test_a_good_definition_loads(tmp_path: Path) -> None:
    definition = load_definition(_write(tmp_path, GOOD))
    assert definition.name == "shop" and definition.type_names == ("buy",)
    assert [(f.name, f.json) for f in definition.fields] == [("amount", ("number",))]
    assert definition.types[0].required == ("amount",) and definition.options[0].default == 5


@pytest.mark.parametrize("change, message", [
    (('name = "shop"', 'name = "Shop!"'), "domain name"),
    (('prefix = "shop.event."', 'prefix = "shop"'), "must end with '.'"),
    (('required = ["amount"]', 'required = ["price"]'), "requires 'price', which is not a field"),
    (('name = "amount"', 'name = "key"'), "is not allowed"),
    (('json = ["number"]', 'json = ["decimal"]'), "decimal"),
    (('severity = "error"', 'severity = "fatal"'), "fatal"),
    (('id = "too-much"', 'id = "missing-required-field"'), "defined twice"),
    (('default = 5', 'default = "five"'), "default"),
    (('label = "Shop"', 'label = "Shop"\ncolour = "red"'), "colour"),
    (('[[types]]\nname = "buy"', '[[types]]\nname = "buy"\n[[types]]\nname = "buy"'), "defined twice"),
])
def test_a_mistake_is_an_error_naming_the_file(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = _write(tmp_path, GOOD.replace(*change, 1))
    with pytest.raises(ConfigError) as caught:
        load_definition(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_definition(_write(tmp_path, "name = "))
    with pytest.raises(ConfigError, match="cannot read"):
        load_definition(tmp_path / "absent.toml")


def test_options_are_typed_and_unknown_ones_refused(tmp_path: Path) -> None:
    _write(tmp_path, GOOD)
    domain = Domain.from_folder(tmp_path, lambda options: None)  # type: ignore[arg-type, return-value]
    assert domain.options() == {"limit": 5}
    assert domain.options({"limit": "7"}) == {"limit": 7}
    with pytest.raises(ConfigError, match="not an integer"):
        domain.options({"limit": "seven"})
    with pytest.raises(ConfigError, match="has no option 'colour'.*limit"):
        domain.options({"colour": "red"})


def test_a_domain_needs_a_machine_or_its_own_pass(tmp_path: Path) -> None:
    _write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match="needs a machine"):
        Domain.from_folder(tmp_path, None)


def test_rules_are_the_engines_then_the_domains(tmp_path: Path) -> None:
    _write(tmp_path, GOOD)
    domain = Domain.from_folder(tmp_path, lambda options: None)  # type: ignore[arg-type, return-value]
    assert [rule.id for rule in domain.rules()] == ["unknown-event-type", "missing-required-field",
                                                    "invalid-field-type", "too-much"]
