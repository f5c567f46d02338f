"""Processing algorithms: thin adapters from Processing parameters to core calls."""
from rs_diffusion_plugin.algorithms.build_training_set import BuildTrainingSetAlgorithm
from rs_diffusion_plugin.algorithms.refine_classification import RefineClassificationAlgorithm
from rs_diffusion_plugin.algorithms.segment_raster import SegmentRasterAlgorithm
from rs_diffusion_plugin.algorithms.synthesize_pairs import SynthesizePairsAlgorithm

ALGORITHMS = (SegmentRasterAlgorithm, BuildTrainingSetAlgorithm, SynthesizePairsAlgorithm,
              RefineClassificationAlgorithm)
