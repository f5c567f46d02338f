"""Processing algorithms: thin adapters from Processing parameters to core calls."""
from rs_diffusion_plugin.algorithms.segment_raster import SegmentRasterAlgorithm

ALGORITHMS = (SegmentRasterAlgorithm,)
