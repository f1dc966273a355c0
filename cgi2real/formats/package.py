"""Model package files, read and checked without torch: config.json and the weights' hash.

A model package is a folder, local or s3://, holding `model.safetensors` (the unwrapped state
dict) and `config.json` (architecture, classes in order, image size, mean/std, geometry, training
summary). This module reads and checks both as files; `model.py` builds the network from them.
A labeling driver needs only this side, so it never imports torch (about 500 MB per process).
"""

import hashlib
import json
from dataclasses import dataclass

from cgi2real.core.archs import ARCHS, DEFAULT_ARCH
from cgi2real.core.config import GEOMETRIES, LEGACY_GEOMETRY
from cgi2real.core.errors import InputError
from cgi2real.storage.locations import Location, first_line, locate

PACKAGE_FORMAT = "cgi2real-model"
PACKAGE_VERSION = 2  # 2: `geometry` recorded (version 1 packages center-crop)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PACKAGE_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # what says a folder holds a package (an interrupted write may leave either)
CONFIG_KEYS = ("arch", "classes", "image_size", "mean", "std", "weights_sha256")
ARCH_KEYS = {DEFAULT_ARCH: ("aux_logits", "transform_input")}  # what else an arch's network is built from


@dataclass
class PackageInfo:
    """What a package's config.json says: everything about it but the network itself."""

    config: dict

    @property
    def classes(self) -> list[str]:
        return self.config["classes"]

    @property
    def arch(self) -> str:
        return self.config["arch"]

    @property
    def image_size(self) -> int:
        return self.config["image_size"]

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.config["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.config["std"])

    @property
    def geometry(self) -> str:
        """How pictures become square input (config.GEOMETRIES); packages before version 2 center-crop."""
        return self.config.get("geometry", LEGACY_GEOMETRY)

    @property
    def model_id(self) -> str:
        """Identifies the weights: the first 16 hex digits of their SHA-256."""
        return self.config["weights_sha256"][:16]


def read_model_package(uri: str, s3_endpoint: str | None = None) -> tuple[dict, bytes]:
    """The raw (config, weights bytes) of a package, the config checked; the weights are checked by
    `check_weights` (and `model.package_from_bytes`) where they are used."""
    folder = locate(uri, s3_endpoint)
    return read_package_config(folder), read_package_weights(folder)


def read_package_weights(folder: Location) -> bytes:
    """The bytes of a package's weights file (unchecked: see `read_model_package`)."""
    try:
        return folder.child(WEIGHTS_FILE).read_bytes()
    except FileNotFoundError:
        raise InputError(f"model package {folder.uri} has no {WEIGHTS_FILE}") from None
    except OSError as e:
        raise InputError(f"cannot read {folder.child(WEIGHTS_FILE).uri}: {first_line(e)}") from None


def read_package_info(uri: str, s3_endpoint: str | None = None) -> PackageInfo:
    """A package's checked config.json, and that its weights file is there (not read: see read_model_package)."""
    folder = locate(uri, s3_endpoint)
    info = PackageInfo(read_package_config(folder))
    if not folder.child(WEIGHTS_FILE).exists():
        raise InputError(f"model package {folder.uri} has no {WEIGHTS_FILE}")
    return info


def read_package_config(folder: Location) -> dict:
    """A package's config.json, refused with one line if it is not a config this cgi2real can use."""
    try:
        config = json.loads(folder.child(CONFIG_FILE).read_bytes())
    except FileNotFoundError:
        what = "no such folder" if not folder.exists() else f"no {CONFIG_FILE}"
        raise InputError(f"not a model package: {folder.uri} ({what})") from None
    except NotADirectoryError:
        raise InputError(f"not a model package: {folder.uri} (a file; a package is a folder with {CONFIG_FILE} and {WEIGHTS_FILE})") from None
    except OSError as e:
        raise InputError(f"cannot read model package {folder.uri}: {first_line(e)}") from None
    except ValueError:
        raise InputError(f"model package {folder.uri}: {CONFIG_FILE} is not valid JSON") from None
    missing = [key for key in CONFIG_KEYS if not isinstance(config, dict) or key not in config]
    if missing or config.get("format") != PACKAGE_FORMAT:
        raise InputError(f"model package {folder.uri}: {CONFIG_FILE} is not a cgi2real package config (missing {', '.join(missing) or 'format'})")
    if config["format_version"] > PACKAGE_VERSION:
        raise InputError(f"model package {folder.uri} has format version {config['format_version']}; this cgi2real reads up to {PACKAGE_VERSION}: upgrade cgi2real")
    if config["arch"] not in ARCHS:
        raise InputError(f"model package {folder.uri} has arch {config['arch']!r}; this cgi2real knows {', '.join(ARCHS)}: upgrade cgi2real")
    missing = [key for key in ARCH_KEYS.get(config["arch"], ()) if key not in config]
    if missing:
        raise InputError(f"model package {folder.uri}: {CONFIG_FILE} of an {config['arch']} package lacks {', '.join(missing)}")
    if config.get("geometry", LEGACY_GEOMETRY) not in GEOMETRIES:
        raise InputError(f"model package {folder.uri} has geometry {config['geometry']!r}; this cgi2real knows {', '.join(GEOMETRIES)}")
    return config


def check_weights(config: dict, weights: bytes, where: str) -> None:
    """Refuse weights that are not the config's (SHA-256). Whether they are a safetensors file that
    fits the architecture needs the network: `model.package_from_bytes` checks that."""
    if hashlib.sha256(weights).hexdigest() != config["weights_sha256"]:
        raise InputError(f"model package {where}: {WEIGHTS_FILE} does not match the SHA-256 in {CONFIG_FILE} (modified or corrupt)")
