"""A faster output projection for CPU decoding.

At a decoding step the output projection multiplies a few hidden states by the
whole vocabulary matrix (49,152 x 576 for SmolLM2). MKL computes
``weight @ hidden.T`` about twice as fast as ``hidden @ weight.T`` (what
``nn.Linear`` asks for) at these shapes (the head alone, fp32), with the same values
up to float rounding (``tests/test_evaluation_generate.py``). More than ``FEW_ROWS``
rows (training batches) and GPUs keep ``nn.Linear``.
"""

from __future__ import annotations

import torch

FEW_ROWS = 64


class RowMajorHead(torch.nn.Linear):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.numel() // hidden.shape[-1]
        if hidden.device.type != "cpu" or rows > FEW_ROWS:
            return super().forward(hidden)
        # contiguous: logits processors (xgrammar's bitmask) write into the logits in place
        out = (self.weight @ hidden.reshape(rows, -1).t()).t().contiguous()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*hidden.shape[:-1], self.out_features)


def use_row_major_head(model) -> None:
    """Swap the model's output projection for ``RowMajorHead`` in place (same weights, ties kept)."""
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear:
        head.__class__ = RowMajorHead
