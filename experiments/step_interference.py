"""Does a MindSpore twin training step slow the PyTorch steps that follow it in the same process?

    flock /tmp/heavy.lock python experiments/step_interference.py LABEL

Batch 32, 224 px, 2 threads, GRAPH mode, fast_conv=auto: PyTorch channels_last
training steps alone, right after MindSpore steps, alternating with them, and
after a 2 s pause; seconds per step. Run it from two checkouts to compare
versions (LABEL names the run). Used for issue 13 (docs/benchmarks.md).
"""
import os, sys, time
os.environ["OMP_NUM_THREADS"] = "2"; os.environ["MBV2_KERNEL_THREADS"] = "2"; os.environ.setdefault("GLOG_v", "3")
import numpy as np, torch, mindspore as ms
from mindspore import nn as msnn
torch.set_num_threads(2)
ms.set_device("CPU"); ms.set_context(mode=ms.GRAPH_MODE, runtime_num_threads=2)
from pt_impl.mobilenetv2 import MobileNetV2 as PtNet
from pt_impl.loss import smoothed_cross_entropy as pt_loss
from pt_impl.optim import build_optimizer as pt_opt
from ms_impl.mobilenetv2 import MobileNetV2 as MsNet
from ms_impl.loss import smoothed_cross_entropy as ms_loss
from ms_impl.optim import build_optimizer as ms_opt
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 3, 224, 224), dtype=np.float32); y = rng.integers(0, 1000, 32)
lr = np.full(100, 0.01, np.float32)
pt = PtNet(num_classes=1000).to(memory_format=torch.channels_last).train()
opt, _ = pt_opt(pt.named_parameters(), lr); crit = pt_loss(0.1)
px = torch.from_numpy(x).contiguous(memory_format=torch.channels_last); py = torch.from_numpy(y)
def pt_step():
    t = time.perf_counter(); opt.zero_grad(set_to_none=True); l = crit(pt(px), py); l.backward(); opt.step(); l.item(); return time.perf_counter() - t
net = MsNet(num_classes=1000); step = msnn.TrainOneStepCell(msnn.WithLossCell(net, ms_loss(0.1)), ms_opt(net.trainable_params(), lr)); step.set_train(True)
mx, my = ms.Tensor(x), ms.Tensor(y.astype(np.int32))
def ms_step():
    t = time.perf_counter(); step(mx, my).asnumpy(); return time.perf_counter() - t
pt_step(); ms_step()
print(sys.argv[1], "load", os.getloadavg()[0])
print("PT alone      ", ["%.2f" % pt_step() for _ in range(3)])
print("MS            ", ["%.2f" % ms_step() for _ in range(2)])
print("PT right after", ["%.2f" % pt_step() for _ in range(3)])
res = []
for _ in range(3):
    ms_step(); res.append(pt_step())
print("PT after each MS step", ["%.2f" % r for r in res])
time.sleep(2)
print("PT after 2 s sleep", ["%.2f" % pt_step() for _ in range(2)])
