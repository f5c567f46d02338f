"""The roofline section's mechanics (benchmarks/roofline.py) on a toy pipeline: every model call is recorded and
replayed bare, FLOPs are counted per call, and a low fraction of peak comes with the layer-shape note."""
import torch

from benchmarks.roofline import Probe, measure_peak, measure_pipeline


class Thin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        return self.depthwise(self.conv(x))


def test_pipeline_calls_are_replayed_bare_and_counted(tmp_path):
    model = Thin().eval()
    batches = [torch.randn(2, 8, 32, 32), torch.randn(1, 8, 32, 32)]   # a last, smaller batch

    def pipeline(_):
        with torch.inference_mode():
            return [model(b).sum() for b in batches]

    row = measure_pipeline("toy", Probe(pipeline, Thin), tmp_path, peak=1e6, repeats=1)
    assert row["calls"] == 2
    expected_flops = sum(2 * b.shape[0] * 32 * 32 * 8 * (8 * 9 + 9) for b in batches)
    assert row["gflop_per_call"] == round(expected_flops / 2 / 1e9, 3)
    assert row["pipeline_over_bare"] > 0 and row["model_gflops_per_s"] > 0 and row["fraction_of_peak"] < 0.3
    assert row["note"].startswith("100% of the convolution FLOPs are in thin")
    assert Thin.forward.__qualname__ == "Thin.forward"   # the recorder is gone afterwards


def test_peak_is_the_better_of_conv_and_matmul():
    peak = measure_peak(repeats=1)
    assert peak["peak_gflops"] == max(peak["conv3x3_gflops"], peak["matmul_gflops"]) > 0
