import pytest
import torch

from storyloom import runtime
from storyloom.errors import UserError


@pytest.mark.parametrize("cudnn, capability, want", [(91900, (9, 0), True), (91300, (8, 0), True), (91200, (9, 0), False),
                                                     (None, (9, 0), False), (91900, (7, 5), False)])
def test_auto_precision_on_cuda_needs_a_cudnn_that_runs_lstms_in_bf16(monkeypatch, cudnn, capability, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: cudnn)
    assert runtime.native_bf16(torch.device("cuda")) is want
    assert runtime.resolve_precision("auto", torch.device("cuda")) == ("bf16" if want else "fp32")
    assert runtime.resolve_precision("fp32", torch.device("cuda")) == "fp32"


def test_device_names_are_checked():
    with pytest.raises(UserError, match="--device must be one of auto, cpu, cuda, got 'tpu'"):
        runtime.device("tpu")
    assert runtime.device("cpu") == torch.device("cpu")
    assert runtime.device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU is visible"):
            runtime.device("cuda")


@pytest.mark.skipif(not hasattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision"), reason="torch < 2.9")
def test_fp32_on_cuda_is_ieee_not_tf32(monkeypatch):
    rnn = torch.backends.cudnn.rnn
    monkeypatch.setattr(rnn, "fp32_precision", "tf32")  # torch's default: cuDNN LSTMs in TF32
    runtime.ieee_fp32_on_cuda()
    assert rnn.fp32_precision == "ieee"
