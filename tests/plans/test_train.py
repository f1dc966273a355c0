"""A training run's plan, without torch or Ray: roots, repeats, splits, the output, the run folder."""

import os

import pytest

from cgi2real.core.config import TrainConfig
from cgi2real.core.errors import InputError
from cgi2real.plans.train import plan, prepare_inputs


def test_several_roots_weights_and_per_root_counts(image_root, tmp_path):
    synth, other = image_root(10, 80), image_root(5, 80, seed=4)
    cfg = TrainConfig(data=(synth, other), data_weights=(1.0, 0.4), out=str(tmp_path / "pkg"), weights="none", image_size=80, batch_size=4)
    data = prepare_inputs(cfg)
    assert data.per_epoch() == {"both": pytest.approx(8 + 0.4 * 4), "horse": pytest.approx(9.6), "human": pytest.approx(9.6)}
    counts = data.counts()
    assert counts["train"] == {"both": 12, "horse": 12, "human": 12} and counts["val"] == {"both": 3, "horse": 3, "human": 3}
    assert [r["weight"] for r in counts["roots"]] == [1.0, 0.4]
    assert counts["roots"][1]["train"] == {"both": 4, "horse": 4, "human": 4} and counts["roots"][1]["masks"] == 12
    for weights, message in [((1.0,), "one number >= 0 per --data"), ((0.0, 0.0), "not all 0"), ((1.0, -1.0), "one number")]:
        with pytest.raises(InputError, match=message):
            prepare_inputs(TrainConfig(data=(synth, other), data_weights=weights, out=str(tmp_path / "p"), weights="none", image_size=80))
    with pytest.raises(InputError, match=r"--paste-prob 2: expected between 0 and 1"):
        prepare_inputs(TrainConfig(data=(synth,), out=str(tmp_path / "p"), weights="none", image_size=80, paste_prob=2))


def test_a_root_may_lack_a_class_that_another_root_has(image_root, tmp_path):
    full = image_root(6, 80)
    no_both = tmp_path / "no_both"
    for name in ("horse", "human"):
        os.makedirs(no_both / name)
        for f in os.listdir(os.path.join(full, name)):
            os.link(os.path.join(full, name, f), no_both / name / f)
    data = prepare_inputs(TrainConfig(data=(str(no_both), full), out=str(tmp_path / "pkg"), weights="none", image_size=80, batch_size=4))
    assert data.counts()["roots"][0]["train"]["both"] == 0
    with pytest.raises(InputError, match="no images of class both in the training data"):
        prepare_inputs(TrainConfig(data=(str(no_both),), out=str(tmp_path / "pkg"), weights="none", image_size=80))


def test_a_package_at_out_is_replaced_only_with_overwrite_and_other_files_never(image_root, package, tmp_path):
    data = image_root(8, 96)
    cfg = TrainConfig(data=(data,), out=package, weights="none", image_size=80, batch_size=4, storage=str(tmp_path / "runs"), name="n")
    with pytest.raises(InputError, match=f"--out {package} holds a model package already; pass --overwrite"):
        plan(cfg)
    assert plan(TrainConfig(**{**cfg.__dict__, "overwrite": True})).cfg.out == package
    os.makedirs(tmp_path / "notes")
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="holds other files .*todo.txt.*, not a model package"):
            plan(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "notes"), "overwrite": overwrite}))
    os.makedirs(tmp_path / "empty")
    assert plan(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "empty")})).data.counts()["train"]  # an empty folder is fine
    assert not (tmp_path / "runs").exists()  # a plan writes nothing


def test_the_plan_says_what_a_run_would_do(image_root, tmp_path):
    cfg = TrainConfig(data=(image_root(8, 96),), out=str(tmp_path / "p"), weights="none", image_size=80, batch_size=4, storage=str(tmp_path / "runs"), name="n")
    checked = plan(cfg)
    lines = "\n".join([*checked.describe(), checked.recipe()])
    assert "training on 18 images per epoch" in lines and f"run 'n' in {tmp_path / 'runs'}" in lines
    assert "inception_v3 at 80 px from weights none: from Conv2d_1a_3x3 on 5 epoch(s) at lr 0.001" in lines, lines
    assert not checked.finished and checked.state is None
