"""cluster.yaml passes Ray's own launcher schema validation, without contacting AWS."""

import copy
import os

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.commands import prepare_config
from ray.autoscaler._private.util import validate_config

CLUSTER_YAML = os.path.join(os.path.dirname(__file__), "..", "..", "cluster.yaml")


@pytest.fixture(scope="module")
def config():
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def test_cluster_yaml_is_a_valid_ray_launcher_config(config):
    validate_config(prepare_config(copy.deepcopy(config)))  # as Ray's test_autoscaler_yaml.py does


def test_cluster_yaml_has_the_node_types_cgi2real_needs(config):
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu"]["min_workers"] == 0 and types["gpu"]["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4", "p5"))
    assert types["cpu"]["min_workers"] == 0 and types["cpu"]["max_workers"] > 0
    assert any("pip install" in c and "cgi2real" in c for c in config["setup_commands"])


def test_the_validation_can_fail(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu"]["min_wrokers"] = 0  # a typo the schema must catch
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
