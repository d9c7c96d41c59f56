"""Tiny PaddleSeg-style exports for tests/test_ppseg.py: `python tests/paddle_seg_models.py KIND OUT_DIR`.

PaddleSeg's tools/export.py wraps the network and appends its `--output_op`: argmax(axis=1, keepdim, int32) (the
default: a label map [N, 1, H, W]), softmax(axis=1) (probabilities [N, C, H, W]) or nothing (logits); the program's
input is `x` [N, 3, H, W], dynamic unless `--input_shape` fixes it. Run as a child process, like
tests/paddle_models.py, so Paddle's static-mode switches never leak into the test process.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

# kind -> (output_op, input shape)
KINDS = {"seg_argmax": ("argmax", [None, 3, None, None]), "seg_softmax": ("softmax", [None, 3, None, None]),
         "seg_none_64": ("none", [1, 3, 64, 64])}


def build(kind: str, out: Path) -> None:
    import paddle
    output_op, shape = KINDS[kind]
    F = paddle.nn.functional

    class Net(paddle.nn.Layer):
        """Convs at 1/2 resolution, a per-pixel Linear classifier over 4 classes (a MatMul: dynamic INT8 has one to
        quantize), bilinear back to the input's size."""

        def __init__(self, classes: int = 4):
            super().__init__()
            self.c1 = paddle.nn.Conv2D(3, 8, 3, padding=1)
            self.c2 = paddle.nn.Conv2D(8, 16, 3, stride=2, padding=1)
            self.cls = paddle.nn.Linear(16, classes)

        def forward(self, x):
            y = F.relu(self.c2(F.relu(self.c1(x))))
            y = self.cls(y.transpose([0, 2, 3, 1])).transpose([0, 3, 1, 2])
            y = F.interpolate(y, size=paddle.shape(x)[2:], mode="bilinear", align_corners=False)
            if output_op == "argmax":
                return paddle.argmax(y, axis=1, keepdim=True, dtype="int32")
            return F.softmax(y, axis=1) if output_op == "softmax" else y

    paddle.seed(7)
    net = Net()
    rng = np.random.default_rng(7)      # trained-looking biases: classes that win on dark strokes, others on paper
    for p in (net.c1.bias, net.c2.bias):
        p.set_value(rng.normal(0, 0.3, p.shape).astype("float32"))
    net.cls.bias.set_value(np.array([0.4, -0.2, 0.1, -0.3], np.float32))
    net.eval()
    paddle.jit.save(net, str(out / "model"), input_spec=[paddle.static.InputSpec(shape, "float32", "x")])


if __name__ == "__main__":
    build(sys.argv[1], Path(sys.argv[2]))
