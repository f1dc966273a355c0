"""An evaluation's plan: the package's config read, each labeled dataset scanned against its
classes, the report folder checked; torch-free (see `plans`)."""

from dataclasses import dataclass

from cgi2real.core.config import EvalConfig
from cgi2real.formats.class_folders import LabeledImages, scan_labeled_dataset
from cgi2real.formats.package import PackageInfo, read_package_info
from cgi2real.storage.locations import Location, check_output, locate

REPORT_FILE = "report.json"


@dataclass
class EvalPlan:
    cfg: EvalConfig
    package: PackageInfo
    datasets: list[LabeledImages]  # per --data, in order
    out: Location | None  # the report folder, if any

    @property
    def geometry(self) -> str:
        return self.cfg.geometry or self.package.geometry

    def preview(self) -> list[str]:
        """--dry-run's lines."""
        return self.describe()

    def describe(self) -> list[str]:
        """What is measured on what (--dry-run)."""
        lines = [f"evaluating {self.package.model_id} ({locate(self.cfg.model, self.cfg.s3_endpoint).uri}), geometry {self.geometry}, on:"]
        for images in self.datasets:
            lines.append(f"  {images.root.uri}: {len(images)} images (" + ", ".join(f"{n} {c}" for c, n in images.class_counts().items()) + ")")
        if self.out is not None:
            lines.append(f"report to {self.out.child(REPORT_FILE).uri}")
        return lines


def plan(cfg: EvalConfig) -> EvalPlan:
    """Everything cheap checked, before torch: settings, the package's config, the datasets, --out."""
    cfg.check()
    package = read_package_info(cfg.model, cfg.s3_endpoint)
    datasets = [
        scan_labeled_dataset(uri, tuple(package.classes), cfg.s3_endpoint, require_every_class=False, classes_from="the model package's classes")
        for uri in cfg.data
    ]
    out = locate(cfg.out, cfg.s3_endpoint) if cfg.out else None
    if out is not None:
        inputs = [("--data", images.root) for images in datasets] + [("--model", locate(cfg.model, cfg.s3_endpoint))]
        check_output(out, "--out", inputs, "report", (REPORT_FILE,), cfg.overwrite)
    return EvalPlan(cfg, package, datasets, out)
