import pytest
import yaml

from lathe.rollout.gateway import httproute, to_yaml, validate_httproute
from lathe.rollout.router import router_config, weights_param
from lathe.serving.config import check_config


def test_httproute_weighted_backend_refs():
    m = httproute("digits", {3: 90, 4: 10}, namespace="ml", service="triton", port=8000,
                  parent_refs=[{"name": "public", "namespace": "gw"}], hostnames=["infer.example.com"])
    validate_httproute(m)
    doc = yaml.safe_load(to_yaml(m))
    refs = doc["spec"]["rules"][0]["backendRefs"]
    assert [(r["weight"], r["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"]) for r in refs] == [
        (90, "/v2/models/digits/versions/3"), (10, "/v2/models/digits/versions/4")]
    assert doc["spec"]["rules"][0]["matches"][0]["path"] == {"type": "PathPrefix", "value": "/v2/models/digits"}
    assert doc["metadata"] == {"name": "digits", "namespace": "ml", "labels": {"app.kubernetes.io/managed-by": "lathe"}}


def test_httproute_per_version_services():
    m = httproute("my_model", {1: 50, 2: 50}, services={1: "triton-v1", 2: "triton-v2"}, pin_version=False)
    validate_httproute(m)
    assert m["metadata"]["name"] == "my-model"
    assert [r["name"] for r in m["spec"]["rules"][0]["backendRefs"]] == ["triton-v1", "triton-v2"]


@pytest.mark.parametrize("mutate,msg", [
    (lambda m: m["spec"]["rules"][0]["backendRefs"][0].update(weight=-1), "weight"),
    (lambda m: m["spec"]["rules"][0]["backendRefs"][0].update(port=None), "port"),
    (lambda m: m["spec"].update(parentRefs=[]), "parentRefs"),
    (lambda m: m["metadata"].update(name="Bad_Name"), "DNS-1123"),
    (lambda m: [r.update(weight=0) for r in m["spec"]["rules"][0]["backendRefs"]], "weights are 0"),
])
def test_httproute_validation_rejects(mutate, msg):
    m = httproute("digits", {1: 90, 2: 10})
    mutate(m)
    with pytest.raises(ValueError, match=msg):
        validate_httproute(m)


def test_router_config_matches_model_io():
    model_cfg = ('name: "digits" backend: "python" max_batch_size: 8 '
                 'input { name: "input" data_type: TYPE_FP32 dims: [64] } '
                 'output { name: "logits" data_type: TYPE_FP32 dims: [10] } dynamic_batching {}')
    cfg = check_config(router_config("digits", model_cfg, {1: 90, 2: 10}), name="digits_router")
    assert cfg.backend == "python" and cfg.max_batch_size == 8 and cfg.HasField("dynamic_batching")
    assert cfg.parameters["weights"].string_value == "1:90,2:10" == weights_param({2: 10, 1: 90})
    assert cfg.parameters["target_model"].string_value == "digits"
    assert [i.name for i in cfg.input] == ["input"] and list(cfg.output[0].dims) == [10]
