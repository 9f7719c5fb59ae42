"""The CRD and the reference doc are generated from the types; these fail when they drift."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from lathe.api.crd import crd, crd_yaml
from lathe.api.reference import reference_markdown
from lathe.api.spec import ModelOptimizationSpec

ROOT = Path(__file__).resolve().parents[2]


def test_crd_file_matches_types():
    assert (ROOT / "crds" / "modeloptimization.yaml").read_text() == crd_yaml(), \
        "crds/modeloptimization.yaml drifted: run `lathe crd -o crds/modeloptimization.yaml`"


def test_reference_doc_matches_types():
    assert (ROOT / "docs" / "reference.md").read_text() == reference_markdown(), \
        "docs/reference.md drifted: run `lathe reference -o docs/reference.md`"


def _walk(node, path="$"):
    yield path, node
    for k, v in (node.get("properties") or {}).items():
        yield from _walk(v, f"{path}.{k}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        if not node.get("x-kubernetes-int-or-string"):
            assert "type" in node, f"{path} has no type"
        assert node.get("default", 0) is not None, f"{path} has a null default"


def test_schema_carries_enums_ranges_and_rules():
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    assert props["target"]["properties"]["device"]["enum"] == ["cpu", "gpu"]
    pass_props = props["candidates"]["items"]["properties"]["passes"]["items"]
    assert pass_props["properties"]["method"]["enum"] == ["structured", "unstructured", "2:4"]
    assert pass_props["properties"]["sparsity"]["minimum"] == 0 and pass_props["properties"]["sparsity"]["maximum"] == 1
    assert pass_props["x-kubernetes-validations"]
    assert spec["required"] == ["model", "data"]
    assert spec["x-kubernetes-validations"][0]["message"] == "tensorrt needs target.device gpu"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))  # every example
def test_examples_parse(name):
    doc = yaml.safe_load((ROOT / "examples" / name).read_text())
    assert doc["apiVersion"] == "lathe.dev/v1alpha1" and doc["kind"] == "ModelOptimization"
    spec = ModelOptimizationSpec.model_validate(doc["spec"])
    from lathe.controller.validate import problems

    keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "service-account.json", "AZURE_STORAGE_ACCOUNT_NAME",
            "AZURE_STORAGE_ACCOUNT_KEY"}  # what each store's Secret needs (storage/secrets.py)
    assert problems(spec, secret_keys=lambda name: keys) == []  # and the operator's checks pass too


def test_unknown_field_is_rejected():
    with pytest.raises(ValidationError, match="budjet"):
        ModelOptimizationSpec.model_validate({"model": {"uri": "m.onnx"}, "data": {"validation": {"uri": "v.npz"}},
                                              "budjet": {}})
