"""The RetFiner optimisation step PyTorch runs in `deno task bench`: ViT + BERT with cross-attention in every layer,
ITC + ITM + MLM + GM on one fixed batch (bench/refine_step.ts is our side). One module whose forward is the total
loss, so that torch_bench.py times it in one process and torch_ddp.py wraps it in DistributedDataParallel.
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures"))
from reference_models import Bert, ViT  # noqa: E402


class RefineStep(nn.Module):
    """`job`: the RefineBenchConfig of bench/refine_step.ts; `batch`: pairs in this module's (micro-)batch."""

    def __init__(self, job, batch):
        super().__init__()
        B, L, V = batch, 30, job["vocab"]
        self.B, self.L, self.V = B, L, V

        class Cfg:
            vocab_size, hidden_size, num_hidden_layers, num_attention_heads = V, job["text_width"], job["text_layers"], job["text_heads"]
            intermediate_size, max_position_embeddings, type_vocab_size, layer_norm_eps = 4 * job["text_width"], 512, 2, 1e-12

        self.vit = ViT(img_size=job["img"], patch_size=16, embed_dim=job["dim"], depth=job["depth"], num_heads=job["heads"])
        self.proj = nn.Linear(job["dim"], job["text_width"]) if job["dim"] != job["text_width"] else nn.Identity()
        self.bert = Bert(Cfg())
        self.hv = nn.Linear(job["text_width"], 256, bias=False)
        self.ht = nn.Linear(job["text_width"], 256, bias=False)
        self.itm = nn.Sequential(nn.Linear(job["text_width"], job["text_width"]), nn.GELU(),
                                 nn.LayerNorm(job["text_width"], eps=1e-12), nn.Linear(job["text_width"], 2))
        self.imgs = torch.randn(B, 3, job["img"], job["img"])
        self.ids = torch.randint(5, V, (B, L))
        self.mask = torch.ones(B, L, dtype=torch.long)

    def masked(self, prob):
        B, L, ids = self.B, self.L, self.ids
        sel = (torch.rand(B, L) < prob) & (torch.arange(L) > 0)
        sel[:, 1] = True
        labels = torch.where(sel, ids, torch.full_like(ids, -100))
        return torch.where(sel, torch.full_like(ids, 3), ids), labels

    def forward(self):
        B, L, V, ids, mask, bert = self.B, self.L, self.V, self.ids, self.mask, self.bert
        tokens = self.proj(self.vit.norm(self.vit.blocks_out(self.imgs)))
        text = bert(ids, mask)[:, 0]
        img_f = F.normalize(self.hv(tokens[:, 0]), dim=-1)
        txt_f = F.normalize(self.ht(text), dim=-1)
        sim = img_f @ txt_f.t() / 0.07
        tgt = torch.arange(B)
        itc = (F.cross_entropy(sim, tgt, label_smoothing=0.1) + F.cross_entropy(sim.t(), tgt, label_smoothing=0.1)) / 2
        with torch.no_grad():
            w_i2t = F.softmax(sim, 1) + 1e-4
            w_i2t.fill_diagonal_(0)
            w_t2i = F.softmax(sim.t(), 1) + 1e-4
            w_t2i.fill_diagonal_(0)
        neg_img = torch.multinomial(w_t2i, 1).squeeze(1)
        neg_txt = torch.multinomial(w_i2t, 1).squeeze(1)
        cls = bert(torch.cat([ids, ids, ids[neg_txt]]), torch.cat([mask, mask, mask[neg_txt]]),
                   torch.cat([tokens, tokens[neg_img], tokens]))[:, 0]
        itm_loss = F.cross_entropy(self.itm(cls), torch.cat([torch.ones(B), torch.zeros(2 * B)]).long())
        m_ids, m_lab = self.masked(0.15)
        mlm = F.cross_entropy(bert.mlm(bert(m_ids, mask, tokens)).reshape(-1, V), m_lab.reshape(-1), ignore_index=-100)
        g_ids, g_lab = self.masked(0.6)
        causal = torch.tril(mask[:, None, :].expand(-1, L, -1))
        gm = F.cross_entropy(bert.mlm(bert(g_ids, causal, tokens)).reshape(-1, V), g_lab.reshape(-1), ignore_index=-100)
        return itc + itm_loss + mlm + gm
