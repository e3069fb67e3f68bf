"""tools/teacher_diagnosis.py's statistics on hand-made outputs."""
import numpy as np
import pytest

from tools import teacher_diagnosis


def test_calibration_error_weighs_each_bins_gap_by_its_share():
  # Bin 0.1-0.2: two values of mean 0.15 with one outcome (frequency 0.5): gap 0.35.
  # Bin 0.9-1.0: two values of mean 0.95, both outcomes 1: gap 0.05.
  probabilities = np.array([0.1, 0.2 - 1e-6, 0.9, 1.0])
  outcomes = np.array([1.0, 0.0, 1.0, 1.0])
  assert teacher_diagnosis.calibration_error(probabilities, outcomes) == pytest.approx(
      0.5 * abs(0.15 - 0.5) + 0.5 * abs(0.95 - 1.0), abs=1e-6)
  assert teacher_diagnosis.calibration_error(np.array([0.0, 1.0]),
                                             np.array([0.0, 1.0])) == 0.0


def test_output_statistics():
  predictions = np.array([[0.9, 0.2], [0.4, 0.6]], np.float32)
  labels = np.array([[1, 0], [0, 0]], np.float32)
  representation = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  stats = teacher_diagnosis.output_statistics(predictions, representation, labels)
  assert stats["representation_norm"] == pytest.approx(2.5)
  assert stats["representation_squared_norm"] == pytest.approx(12.5)
  assert stats["representation_dimension_std"] == pytest.approx((1.5 + 2.0) / 2)
  assert stats["probability_of_labels"] == pytest.approx(0.9)
  assert stats["probability_of_others"] == pytest.approx((0.2 + 0.4 + 0.6) / 3)
  # Top-1: class 0 of video 0 (0.9, a label) and class 1 of video 1 (0.6, not one),
  # in bins 9 and 6: gaps 0.1 and 0.6, half each.
  assert stats["ece_top1"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.6, abs=1e-6)
