"""An evaluation's plan: the package's classes against each dataset, the report folder."""

import pytest

from cgi2real.core.config import EvalConfig
from cgi2real.core.errors import InputError
from cgi2real.plans.evaluate import REPORT_FILE, plan


def test_a_report_is_replaced_only_with_overwrite(image_root, package, tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / REPORT_FILE).write_text("{}")
    cfg = EvalConfig(model=package, data=(image_root(8, 96),), out=str(tmp_path / "report"))
    with pytest.raises(InputError, match="holds a report already; pass --overwrite"):
        plan(cfg)
    checked = plan(EvalConfig(**{**cfg.__dict__, "overwrite": True}))
    assert [len(d) for d in checked.datasets] == [24] and checked.geometry == "crop"
    assert "  " + image_root(8, 96) + ": 24 images (8 both, 8 horse, 8 human)" in checked.describe()
