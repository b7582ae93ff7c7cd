"""The one definition of the reward model and the value model: a backbone with a scalar head.

The paper's RM is the SFT model with its unembedding replaced by a scalar head;
its value function starts from the RM. Both are :class:`ScalarHeadModel`: the
reward is the head's output at the last real (non-pad) token, the values are
its output at every token. Saved as a plain transformers backbone checkpoint
plus ``scalar_head.safetensors``, so the trainer, the reward service and the
tests all load a trained RM through :meth:`ScalarHeadModel.from_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

HEAD_FILE = "scalar_head.safetensors"
HEAD_CONFIG = "scalar_head.json"


class ScalarHeadModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        if head is None:
            # Small init: a fresh head starts near 0 for every answer, as a calibrated RM would.
            head = nn.Linear(hidden, 1)
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)
        self.head = head.to(device=next(backbone.parameters()).device, dtype=torch.float32)

    @property
    def config(self):
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def values(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(batch, seq) scalar output at every position (the value function's view).

        ``position_ids`` lets left-padded rows (PPO rollouts) start their positions at 0.
        """
        # No KV cache: a scoring pass is never continued, and building one costs memory.
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        # The head runs in fp32 (also under autocast): rewards are compared by small differences.
        with torch.autocast(hidden.device.type, enabled=False):
            return self.head(hidden.float()).squeeze(-1)

    def rewards(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(batch,) scalar at the last real token of each (right- or left-padded) row."""
        values = self.values(input_ids, attention_mask, position_ids)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (positions * attention_mask).argmax(dim=1)
        return values[torch.arange(values.shape[0], device=values.device), last]

    def train_only_top_layers(self, count: int) -> None:
        """Freeze the embeddings and every transformer block below the top ``count`` (the
        final norm and the head keep training); 0 leaves everything trainable.

        Backward then stops at the lowest trained block, so a step costs about a forward
        pass plus ``count / layers`` of a backward: on 2 CPU cores, what makes an RM on a
        few hundred comparisons fit between rounds of traffic. Lower blocks hold general
        language features that a few hundred comparisons could only blur.
        """
        blocks = self.backbone.layers
        if count <= 0 or count >= len(blocks):
            self.requires_grad_(True)
            return
        self.backbone.requires_grad_(False)
        for block in blocks[-count:]:
            block.requires_grad_(True)
        self.backbone.norm.requires_grad_(True)
        self.head.requires_grad_(True)

    def shift_bias(self, amount: float) -> None:
        """Add ``amount`` to every output (used to centre rewards on reference answers)."""
        with torch.no_grad():
            self.head.bias.add_(amount)

    # ----- persistence ---------------------------------------------------------

    def save_pretrained(self, folder: Path | str) -> None:
        folder = Path(folder)
        self.backbone.save_pretrained(folder)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
            str(folder / HEAD_FILE),
        )
        (folder / HEAD_CONFIG).write_text(json.dumps({"kind": "scalar_head", "outputs": 1}))

    @classmethod
    def from_pretrained(
        cls, folder: Path | str, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> ScalarHeadModel:
        """Load a saved RM/value model, or start one from a policy checkpoint (fresh head)."""
        folder = Path(folder)
        config = AutoConfig.from_pretrained(folder)
        backbone = AutoModel.from_pretrained(folder, config=config, dtype=dtype).to(device)
        model = cls(backbone)
        head_file = folder / HEAD_FILE
        if head_file.is_file():
            model.head.load_state_dict(load_file(str(head_file), device=device))
        return model

    @staticmethod
    def has_head(folder: Path | str) -> bool:
        return (Path(folder) / HEAD_FILE).is_file()
