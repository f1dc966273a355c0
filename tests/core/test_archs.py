"""The architectures described without torch: sizes and normalization as timm has them."""

from cgi2real.core.archs import ARCHS
from cgi2real.model.networks import build_model


def test_arch_sizes_and_normalization_are_timms():
    """What archs.py says of each Lite (torch-free, for the CLI) is what timm says of the network."""
    import timm.data

    for spec in ARCHS.values():
        if spec.timm_name:
            config = timm.data.resolve_data_config({}, model=build_model(3, spec.image_size, "none", arch=spec.name))
            assert (config["input_size"][1], config["mean"], config["std"]) == (spec.image_size, spec.mean, spec.std)
