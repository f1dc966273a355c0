"""An adaptation's plan: the target images listed, the source package's config read and checked,
the output checked, a SHOT run's folder checked for resuming; torch-free (see `plans`)."""

import os
from dataclasses import dataclass
from datetime import datetime

from cgi2real.core.config import AdaptConfig
from cgi2real.core.errors import InputError
from cgi2real.formats.checkpoints import check_same_settings, latest_checkpoint
from cgi2real.formats.class_folders import ImageFiles, scan_image_files
from cgi2real.formats.package import PACKAGE_FILES, PackageInfo, read_package_info
from cgi2real.storage.locations import Location, check_output, locate

MIN_IMAGES = 64  # statistics of fewer target images are noise
# Settings that may change when an adaptation resumes.
RESUMABLE_CHANGES = frozenset({"out", "overwrite", "workers", "use_gpu", "storage", "name", "max_failures", "s3_endpoint"})


@dataclass
class AdaptPlan:
    cfg: AdaptConfig
    sources: list[ImageFiles]  # the target images, per --data
    package: PackageInfo  # the source package's config (its weights are checked when read)
    out: Location
    storage: Location | None = None  # shot: where its checkpoints go
    name: str | None = None  # shot: the run's name there

    @property
    def images(self) -> int:
        return sum(len(files) for files in self.sources)

    def preview(self) -> list[str]:
        """--dry-run's lines."""
        return self.describe()

    def describe(self) -> list[str]:
        """What is adapted, to what, and where it goes: printed at the start and by --dry-run."""
        sources = ", ".join(f.root.uri for f in self.sources)
        lines = [f"adapting {self.package.model_id} ({self.cfg.method}) to {self.images} images under {sources}; package to {self.out.uri}"]
        if self.storage is not None:
            lines.append(f"run {self.name!r} in {self.storage.uri}: rerun with --storage {self.storage.uri} --name {self.name} to resume")
        return lines


def plan(cfg: AdaptConfig) -> AdaptPlan:
    """Everything cheap checked, before torch or Ray: settings, target images, source package, --out, a shot run's folder."""
    cfg.check()
    sources = [scan_image_files(uri, cfg.s3_endpoint) for uri in cfg.data]
    images = sum(len(files) for files in sources)
    if images < MIN_IMAGES:
        raise InputError(f"{images} target images under {', '.join(f.root.uri for f in sources)}: adaptation needs at least {MIN_IMAGES}")
    storage = name = None
    if cfg.method == "shot":  # a resumed run's settings first, as `train` checks them
        name = cfg.name or datetime.now().strftime("cgi2real-adapt-%Y%m%d-%H%M%S")
        storage = locate(cfg.storage or os.path.join(os.path.expanduser("~"), "ray_results"), cfg.s3_endpoint)
        latest = latest_checkpoint(storage.child(name))
        if latest is not None:
            check_same_settings(latest, storage.child(name), cfg, RESUMABLE_CHANGES)
    out = locate(cfg.out, cfg.s3_endpoint)
    model = locate(cfg.model, cfg.s3_endpoint)
    check_output(out, "--out", [("--data", files.root) for files in sources] + [("--model", model)], "adapted package", PACKAGE_FILES, cfg.overwrite)
    return AdaptPlan(cfg, sources, read_package_info(cfg.model, cfg.s3_endpoint), out, storage, name)
