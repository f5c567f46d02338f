"""rsdiffusion:refine_classification with a REFERENCE layer: coarse vs refined scores in the feedback and outputs."""
import numpy as np
import pytest
from qgis.core import QgsProcessingContext, QgsProcessingFeedback

from core.raster import write_geotiff
from tests.conftest import UTM33
from tests.idgbr_fixtures import make_refiner_dir
from tests.test_plugin_refine import ALG, MODEL_CLASSES, NODATA, TRANSFORM, write_pair

pytestmark = pytest.mark.qgis


class Feedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.lines = []

    def pushInfo(self, info):  # noqa: N802
        self.lines.append(info)

    def reportError(self, error, fatalError=False):  # noqa: N802
        self.lines.append(error)


def test_reference_layer_scores_appear_in_feedback_and_outputs(processing, tmp_path):
    refiner = make_refiner_dir(tmp_path / "refiner", classes=MODEL_CLASSES, tile_size=32)
    image, classes = write_pair(tmp_path)
    truth = np.repeat(np.array([1, 1, 2, 2, 4, 4], np.uint8), 6)[:32]
    reference = write_geotiff(tmp_path / "survey.tif", np.tile(truth, (32, 1)), crs_wkt=UTM33, transform=TRANSFORM,
                              nodata=NODATA)
    feedback = Feedback()
    result = processing.run(ALG, {"INPUT": str(image), "CLASSIFICATION": str(classes), "MODEL": str(refiner),
                                  "REFERENCE": str(reference), "STEPS": 2, "OUTPUT": str(tmp_path / "out.tif")},
                            context=QgsProcessingContext(), feedback=feedback)
    assert 0 <= result["COARSE_WFM3"] <= 1 and 0 <= result["REFINED_WFM3"] <= 1
    text = "\n".join(feedback.lines)
    assert "Against the reference 'survey'" in text and "WFm@3" in text
    assert "of the valid pixels changed (field" in text      # the per-class change report


def test_strength_reaches_the_sampler(processing, tmp_path):
    """STRENGTH (advanced) is the run's share of the DDIM chain, started from the noised classification."""
    refiner = make_refiner_dir(tmp_path / "refiner", classes=MODEL_CLASSES, tile_size=32)
    image, classes = write_pair(tmp_path)
    feedback = Feedback()
    processing.run(ALG, {"INPUT": str(image), "CLASSIFICATION": str(classes), "MODEL": str(refiner), "STEPS": 4,
                         "STRENGTH": 0.5, "OUTPUT": str(tmp_path / "out.tif")},
                   context=QgsProcessingContext(), feedback=feedback)
    assert any("4 steps" in line and "strength 0.5" in line for line in feedback.lines)


def test_max_entropy_reaches_the_pipeline_and_keeps_unsure_pixels(processing, tmp_path):
    """MAX_ENTROPY (advanced) is the run's entropy gate: an untrained refiner is unsure everywhere, so a low gate
    keeps every coarse class (nothing changes) where the same run without a gate changes pixels."""
    refiner = make_refiner_dir(tmp_path / "refiner", classes=MODEL_CLASSES, tile_size=32)
    image, classes = write_pair(tmp_path)
    changed = {}
    for gate in (1.0, 0.01):
        feedback = Feedback()
        result = processing.run(ALG, {"INPUT": str(image), "CLASSIFICATION": str(classes), "MODEL": str(refiner),
                                      "STEPS": 2, "MAX_ENTROPY": gate, "OUTPUT": str(tmp_path / f"out{gate:g}.tif")},
                                context=QgsProcessingContext(), feedback=feedback)
        changed[gate] = result["CHANGED_FRACTION"]
        gated_line = any("changes kept where the entropy is <= 0.01" in line for line in feedback.lines)
        assert gated_line == (gate < 1)
    assert changed[1.0] > 0 and changed[0.01] == 0
