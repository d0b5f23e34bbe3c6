"""Decoding against CTranslate2: the pieces of ``attnlab bench``'s ``ct2-*`` cases.

One randomly initialised Transformer base (seeded) is decoded with the same weights by:

- **ours**: ``DecodingEngine`` fp32 (plain steps, packed weights, beam pools) and
  ``DecodingEngine(int8=True)`` (``attnlab.inference.quantized``);
- **HF**: ``MarianMTModel.generate`` with our weights copied in (``marian_from``);
- **CT2**: that Marian model converted by ``ctranslate2.converters.TransformersConverter``, in fp32
  or with int8 weights (``quantization="int8"``), behind a minimal MarianTokenizer vocabulary
  (token names ``t<id>``; two SentencePiece models trained at bench time on a few lines).

Batch 8, exactly 64 new tokens (EOS suppressed), 2 threads. ``token_check`` compares the engines'
tokens with HF's first (a count of differing tokens, not a crash: random weights give near-ties
that a different summation order can flip).

    attnlab bench --only ct2

runs the four cases (``benchmarks.suite``), each in a fresh interpreter that imports ctranslate2
before torch and holds one CTranslate2 translator, because of two ways one process skews the
comparison (measured in docs/results/ctranslate2.md):

- torch puts its OpenMP runtime (libgomp) in the process's global symbol scope, and a ctranslate2
  loaded after it binds its OpenMP calls to torch's runtime instead of its own copy. Two thread
  teams (the main thread's and CTranslate2's worker thread's) then share one runtime that counts
  more threads than cores and stops spinning between parallel regions: both sides slow down;
- a second CTranslate2 translator's thread team slows the first, even once it is deleted.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from attnlab.decoding import beam_search, greedy_search
from attnlab.inference.engine import DecodingEngine
from attnlab.models.transformer import Transformer, TransformerConfig
from benchmarks.translation import EOS, PAD, marian, random_batch

SPECIALS = {"<pad>": PAD, "<unk>": 1, "<s>": 2, "</s>": EOS}
BATCH, SRC_LEN, NEW_TOKENS = 8, 32, 64
PRECISIONS = {"float32": "fp32", "int8": "int8"}  # CT2's compute type: our name for it


# --- the same weights in Marian ----------------------------------------------------------------
def marian_from(model: Transformer):
    """``MarianMTModel`` computing what ``model`` (post-norm, tied shared embeddings, sinusoidal
    positions) computes: our weights copied in, q/k/v split from the fused in-projections."""
    hf = marian(model.config)
    with torch.no_grad():
        hf.model.shared.weight.copy_(model.src_embed.weight)
        table = model.positional.table[: model.config.max_len]  # (max_len, D), ours interleaved sin/cos
        for stack in (hf.model.encoder, hf.model.decoder):
            stack.embed_positions.weight.copy_(table)
        for ours, theirs in zip(model.encoder_layers, hf.model.encoder.layers):
            _copy_attention(ours.self_attn, theirs.self_attn)
            _copy_block(
                ours, theirs, [(ours.norm1, theirs.self_attn_layer_norm), (ours.norm2, theirs.final_layer_norm)]
            )
        for ours, theirs in zip(model.decoder_layers, hf.model.decoder.layers):
            _copy_attention(ours.self_attn, theirs.self_attn)
            _copy_attention(ours.cross_attn, theirs.encoder_attn)
            norms = [
                (ours.norm1, theirs.self_attn_layer_norm),
                (ours.norm2, theirs.encoder_attn_layer_norm),
                (ours.norm3, theirs.final_layer_norm),
            ]
            _copy_block(ours, theirs, norms)
    return hf.eval()


def _copy_attention(ours, theirs) -> None:
    for proj, w, b in zip(
        (theirs.q_proj, theirs.k_proj, theirs.v_proj), ours.in_proj_weight.chunk(3), ours.in_proj_bias.chunk(3)
    ):
        proj.weight.copy_(w)
        proj.bias.copy_(b)
    theirs.out_proj.load_state_dict(ours.out_proj.state_dict())


def _copy_block(ours, theirs, norms) -> None:
    theirs.fc1.load_state_dict(ours.ffn.fc1.state_dict())
    theirs.fc2.load_state_dict(ours.ffn.fc2.state_dict())
    for our_norm, their_norm in norms:
        their_norm.load_state_dict(our_norm.state_dict())


# --- CTranslate2 -------------------------------------------------------------------------------
def save_vocabulary(directory: Path, vocab_size: int) -> None:
    """A MarianTokenizer in ``directory``: ``vocab.json`` of our ids (the specials, then ``t<id>``)
    and SentencePiece models trained on a few lines (CT2 reads only the vocabulary)."""
    import sentencepiece as spm
    from transformers import MarianTokenizer

    vocab = {**SPECIALS, **{f"t{i}": i for i in range(len(SPECIALS), vocab_size)}}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    lines = [f"sentence {i} of the bench vocabulary, with words and numbers" for i in range(50)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(directory / "spm"), vocab_size=40, minloglevel=2
    )
    spm_file = str(directory / "spm.model")
    with _no_sacremoses_warning():
        MarianTokenizer(spm_file, spm_file, str(directory / "vocab.json")).save_pretrained(directory)


@contextlib.contextmanager
def _no_sacremoses_warning():
    """MarianTokenizer's "Recommended: pip install sacremoses", moot here: nothing is tokenised."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sacremoses")
        yield


def convert(hf, directory: Path, quantization: str):
    """``hf`` converted to a CTranslate2 model in ``directory / quantization``; returns its path.

    ``TransformersConverter`` loads the model we give it (not ``from_pretrained``, which would
    redraw the sinusoids); the decoder starts from the ``<s>`` embedding as ours and HF's do (the
    Marian loader's default is a zero vector), and keeps every vocabulary row."""
    from ctranslate2.converters import TransformersConverter

    hf = copy.deepcopy(hf)  # int8 conversion quantises the weights it is given in place

    class InMemoryConverter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            return hf

        def _load(self):
            spec = super()._load()
            # The Marian loader drops the last vocabulary row, taking it for the <pad> that HF's
            # Marian conversions append; ours has <pad> at 0 and nothing appended.
            shared = hf.model.shared.weight
            spec.encoder.embeddings[0].weight = spec.decoder.embeddings.weight = shared
            spec.decoder.projection.weight = shared
            spec.decoder.start_from_zero_embedding = False
            spec.config.decoder_start_token = "<s>"
            return spec

    hf.config.save_pretrained(directory)
    out = directory / quantization
    with _no_sacremoses_warning():  # the converter loads the tokenizer for its vocabulary
        InMemoryConverter(str(directory)).convert(str(out), quantization=quantization, force=True)
    return out


def ct2_source(src: Tensor) -> list[list[str]]:
    """``src (B, S)`` ids as CT2's source tokens (padding cut, EOS kept)."""
    names = {i: name for name, i in SPECIALS.items()}
    return [[names.get(i, f"t{i}") for i in row if i != PAD] for row in src.tolist()]


def ct2_ids(results, k: int = 0) -> Tensor:
    """``(B, T)`` ids of CT2's ``k``-th hypotheses."""
    ids = [[SPECIALS[t] if t in SPECIALS else int(t[1:]) for t in r.hypotheses[k]] for r in results]
    return torch.tensor(ids)


def translators(hf, directory: Path, compute_types: tuple[str, ...], threads: int) -> dict:
    """CT2 ``Translator``s of ``hf`` (CPU), one per compute type (``"float32"``, ``"int8"``), named
    ``CT2 fp32`` / ``CT2 int8``; converted in ``directory``, which may go once they are loaded."""
    import ctranslate2

    save_vocabulary(directory, hf.config.vocab_size)
    return {
        f"CT2 {PRECISIONS[kind]}": ctranslate2.Translator(
            str(convert(hf, directory, kind)), device="cpu", compute_type=kind, intra_threads=threads
        )
        for kind in compute_types
    }


# --- the peers ---------------------------------------------------------------------------------
def setup(config: TransformerConfig, batch: int = BATCH, src_len: int = SRC_LEN) -> tuple[Transformer, object, Tensor]:
    """The seeded model, its Marian copy and a source batch ``(batch, src_len)``."""
    torch.manual_seed(0)
    model = Transformer(config).eval()
    return model, marian_from(model), random_batch(batch, src_len, config.src_vocab_size, 3)


def searches(
    model: Transformer,
    hf,
    ct2_models: dict,
    src: Tensor,
    beam: int,
    new_tokens: int = NEW_TOKENS,
    precisions: tuple[str, ...] = ("fp32", "int8"),
) -> dict[str, Callable[[], Tensor]]:
    """Each peer's search of ``src (B, S)``, returning ``(B, new_tokens)`` ids: ours in
    ``precisions``, HF fp32 and the translators of ``ct2_models``."""
    engines = {f"ours {p}": DecodingEngine(model, int8=p == "int8") for p in precisions}
    tokens = ct2_source(src)

    def ours(engine: DecodingEngine) -> Callable[[], Tensor]:
        options = {"max_len_a": 0.0, "max_len_b": new_tokens, "min_len": new_tokens}
        if beam == 1:
            return lambda: greedy_search(engine, src, **options).tokens
        return lambda: beam_search(engine, src, beam_size=beam, **options).tokens[:, 0]

    @torch.no_grad()
    def hf_generate() -> Tensor:
        out = hf.generate(
            input_ids=src,
            attention_mask=src.ne(PAD),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            num_beams=beam,
            do_sample=False,
            early_stopping=False,
        )
        return out[:, 1:]  # without the decoder start token

    def ct2(translator) -> Callable[[], Tensor]:
        # min = max decoding length: EOS is masked at every step, as min_len / min_new_tokens do.
        options = {"beam_size": beam, "max_decoding_length": new_tokens, "min_decoding_length": new_tokens}
        return lambda: ct2_ids(translator.translate_batch(tokens, max_batch_size=len(tokens), **options))

    peers = {name: ours(engine) for name, engine in engines.items()}
    peers["HF fp32"] = hf_generate
    peers.update({name: ct2(translator) for name, translator in ct2_models.items()})
    return peers


def agreement(peers: dict[str, Callable[[], Tensor]]) -> dict[str, dict]:
    """Tokens each peer's search gives that differ from HF fp32's, and the first step where one does."""
    reference = peers["HF fp32"]()
    report = {}
    for name, search in peers.items():
        tokens = search()
        if tokens.shape != reference.shape:
            raise RuntimeError(f"{name} made tokens of shape {tuple(tokens.shape)}, HF {tuple(reference.shape)}")
        differ = tokens.ne(reference)
        steps = differ.any(dim=0).nonzero()
        report[name] = {
            "differing_tokens": int(differ.sum()),
            "differing_sentences": int(differ.any(dim=1).sum()),
            "first_differing_step": int(steps[0]) if len(steps) else None,
        }
    return report


def token_check(peers: dict[str, Callable[[], Tensor]], must_match: tuple[str, ...]) -> dict:
    """``agreement`` of ``peers`` with HF fp32, and whether each of ``must_match`` gives its tokens exactly.

    Returns:
        ``reference`` ("HF fp32"), ``peers`` (each other peer's ``agreement``), ``must_match``,
        ``mismatched`` (those of ``must_match`` with a differing token) and ``match`` (none).
    """
    report = agreement(peers)
    mismatched = [name for name in must_match if report[name]["differing_tokens"]]
    return {
        "reference": "HF fp32",
        "peers": {name: a for name, a in report.items() if name != "HF fp32"},
        "must_match": list(must_match),
        "mismatched": mismatched,
        "match": not mismatched,
    }
