"""Proxy FID: the Frechet distance itself, and features from the starter segmenter."""
import numpy as np

from core.metrics.fid import SegmenterFeatures, frechet_distance
from core.segmentation.model import load_segmenter


def test_frechet_distance_of_gaussians_has_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 3))
    b = rng.normal(0, 2, (20000, 3)) + np.array([1.0, 0, 0])
    # 1-D Gaussians per axis, independent: |dmu|^2 + sum (s_a - s_b)^2 = 1 + 3 * (1 - 2)^2
    assert abs(frechet_distance(a, b) - 4.0) < 0.1
    assert frechet_distance(a, a) < 1e-6


def test_features_separate_real_scenes_from_noise(starter_model):
    from core.data.scenes import make_scene
    features = SegmenterFeatures(*load_segmenter(starter_model))
    scenes = np.stack([make_scene(64, 64, seed=s)[0] for s in range(24)]).astype(np.float32)
    other = np.stack([make_scene(64, 64, seed=100 + s)[0] for s in range(24)]).astype(np.float32)
    noise = np.random.default_rng(0).uniform(0, 255, scenes.shape).astype(np.float32)
    f_scenes, f_other, f_noise = features(scenes), features(other), features(noise)
    assert f_scenes.shape == (24, 24 + 48)
    assert frechet_distance(f_scenes, f_other) < frechet_distance(f_scenes, f_noise) / 3
