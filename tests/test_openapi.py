"""The OpenAPI document the service serves: every reference in it resolves, and the methods it documents are the
registry's."""

from app.main import create_app
from fishersft.methods import registered
from fishersft.service.settings import Settings


def openapi() -> dict:
    return create_app(Settings()).openapi()


def references(node: object) -> set[str]:
    """Every `$ref` under `node`."""
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(references(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(references(value) for value in node))
    return set()


def test_every_schema_reference_resolves():
    document = openapi()
    names = {ref.removeprefix("#/components/schemas/") for ref in references(document)}
    missing = sorted(names - set(document["components"]["schemas"]))
    assert not missing, f"$ref to schemas that do not exist: {missing}"


def test_the_method_enum_is_the_registry():
    schemas = openapi()["components"]["schemas"]
    method = schemas["SelectionOptions-Input"]["properties"]["method"]
    assert method["enum"] == [spec.name for spec in registered()]
    assert all(f"`{spec.name}`" in method["description"] for spec in registered())
