"""Processing algorithms: thin adapters from Processing parameters to core calls."""
from rs_diffusion_plugin.algorithms.build_change_training_set import BuildChangeTrainingSetAlgorithm
from rs_diffusion_plugin.algorithms.build_training_set import BuildTrainingSetAlgorithm
from rs_diffusion_plugin.algorithms.detect_changes import DetectChangesAlgorithm
from rs_diffusion_plugin.algorithms.detect_oil_spills import DetectOilSpillsAlgorithm
from rs_diffusion_plugin.algorithms.export_onnx import ExportOnnxAlgorithm
from rs_diffusion_plugin.algorithms.filter_sar_pairs import FilterSarPairsAlgorithm
from rs_diffusion_plugin.algorithms.fuse_ir_visible import FuseIrVisibleAlgorithm
from rs_diffusion_plugin.algorithms.refine_classification import RefineClassificationAlgorithm
from rs_diffusion_plugin.algorithms.segment_raster import SegmentRasterAlgorithm
from rs_diffusion_plugin.algorithms.synthesize_change_pairs import SynthesizeChangePairsAlgorithm
from rs_diffusion_plugin.algorithms.synthesize_pairs import SynthesizePairsAlgorithm
from rs_diffusion_plugin.algorithms.synthesize_sar_pairs import SynthesizeSarPairsAlgorithm
from rs_diffusion_plugin.algorithms.train_change_detector import TrainChangeDetectorAlgorithm
from rs_diffusion_plugin.algorithms.train_oil_spill_detector import TrainOilSpillDetectorAlgorithm
from rs_diffusion_plugin.algorithms.train_segmenter import TrainSegmenterAlgorithm

ALGORITHMS = (SegmentRasterAlgorithm, BuildTrainingSetAlgorithm, SynthesizePairsAlgorithm,
              RefineClassificationAlgorithm, DetectOilSpillsAlgorithm, SynthesizeSarPairsAlgorithm,
              FilterSarPairsAlgorithm, FuseIrVisibleAlgorithm, DetectChangesAlgorithm, BuildChangeTrainingSetAlgorithm,
              SynthesizeChangePairsAlgorithm, TrainSegmenterAlgorithm, TrainOilSpillDetectorAlgorithm,
              TrainChangeDetectorAlgorithm, ExportOnnxAlgorithm)
