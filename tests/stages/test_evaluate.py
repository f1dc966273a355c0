"""Evaluation: calibration error, abstention and the confusion matrix, worked by hand."""

import io

import numpy as np
import pytest
from PIL import Image

from cgi2real.formats.plots import reliability_png
from cgi2real.stages.evaluate import abstention, calibration, confusion_matrix


def test_calibration_error_and_abstention_by_hand():
    probs = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]], np.float32)
    labels = np.array([0, 1, 1, 2])
    fit = calibration(probs, labels)
    # bin 0.9: accuracy 1/2, confidence 0.9; bin 0.6: accuracy 1, confidence 0.6 -> ECE = 0.5*0.4 + 0.5*0.4
    assert fit["ece"] == pytest.approx(0.4, abs=1e-6)
    assert [b["n"] for b in fit["bins"]] == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert abstention(probs, labels, 0.7) == {"threshold": 0.7, "covered": 2, "coverage": 0.5, "accuracy": 0.5}
    assert abstention(probs, labels, 0.95)["accuracy"] is None
    assert confusion_matrix(probs, labels, 3).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    perfect = calibration(np.eye(3, dtype=np.float32), np.arange(3))
    assert perfect["ece"] == 0.0
    report = {"ece": fit["ece"], "n": 4, "calibration": fit["bins"]}
    assert Image.open(io.BytesIO(reliability_png(report, "toy"))).format == "PNG"
