"""Translation Transformer: training vs ``torch.nn.Transformer``, decoding vs Hugging Face Marian.

(a) training tokens/s (forward, backward, fused Adam step) of ``attnlab.models.transformer``
    against ``nn.Transformer`` with the same embeddings, positions and tied output projection;
(b) greedy and (c) beam-5 decoding tokens/s with our KV cache against ``MarianMTModel.generate``
    (randomly initialised, same sizes), batch 8 (``--batch``), EOS suppressed so both make exactly N
    tokens (64, ``--new-tokens``);
(d) the same two searches in bf16: ours under bf16 autocast against HF under the same autocast
    and HF with its weights cast to bf16, whichever is faster (``--no-bf16`` skips these);
(e) training and greedy tokens/s of each RNN seq2seq variant (no attention, Bahdanau, Luong
    dot / general / concat), the cost of each form of attention (``--rnn-only`` for just these).

Peers run interleaved (A B A B) in one process on 2 threads after a warm-up; the result is the
ratio of medians. Blocks during which other processes used a noticeable share of the CPU are
dropped (when enough remain). ``--device cuda`` runs every case on the GPU (each call ends with a
synchronize) and, with ``--bf16``, adds training under bf16 autocast. Prints a table and
writes ``benchmarks/results/translation.json``.

    .venv/bin/python -m benchmarks.translation [--quick] [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from attnlab.decoding import beam_search, greedy_search
from attnlab.functional.kernels import onednn
from attnlab.inference.engine import DecodingEngine
from attnlab.layers import SinusoidalPositionalEncoding
from attnlab.models.rnn_seq2seq import ATTENTION_VARIANTS, RNNSeq2Seq, Seq2SeqConfig
from attnlab.models.transformer import Transformer, TransformerConfig
from benchmarks.common import timed

PAD, BOS, EOS = 0, 2, 3
FOREIGN_CPU_LIMIT = 0.25  # drop blocks where other processes used more than this share of all cores


class TorchSeq2Seq(nn.Module):
    """``nn.Transformer`` with what ours has around it: scaled embeddings, sinusoidal positions,
    dropout and an output projection tied to the target embedding."""

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.d_model = c.d_model
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=c.pad_id)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.d_model, padding_idx=c.pad_id)
        self.positional = SinusoidalPositionalEncoding(c.d_model, c.max_len)
        self.dropout = nn.Dropout(c.dropout)
        self.transformer = nn.Transformer(
            c.d_model,
            c.num_heads,
            c.num_encoder_layers,
            c.num_decoder_layers,
            c.dim_feedforward,
            c.dropout,
            batch_first=True,
            norm_first=c.norm_first,
        )
        # nn.Transformer drops attention weights at its one dropout rate; the paper's model (and
        # ours by default) does not: the same attn_dropout on both sides.
        for module in self.transformer.modules():
            if isinstance(module, nn.MultiheadAttention):
                module.dropout = c.attn_dropout
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self.output.weight = self.tgt_embed.weight

    def _embed(self, embedding: nn.Embedding, tokens: Tensor) -> Tensor:
        return self.dropout(self.positional(embedding(tokens) * math.sqrt(self.d_model)))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        src_mask = src.eq(PAD)
        length = tgt_in.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tgt_in.device).triu(
            1
        )  # bool like the padding masks: no conversion
        hidden = self.transformer(
            self._embed(self.src_embed, src),
            self._embed(self.tgt_embed, tgt_in),
            tgt_mask=causal,
            src_key_padding_mask=src_mask,
            memory_key_padding_mask=src_mask,
            tgt_is_causal=True,
        )
        return self.output(hidden)


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` that returns only once the GPU has finished its work (CUDA runs asynchronously)."""
    if device.type != "cuda":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def compare(
    name: str,
    peers: dict[str, Callable[[], object]],
    tokens: int,
    repeats: int,
    warmup: int,
    device: torch.device = torch.device("cpu"),
) -> dict:
    """Interleave the peers ``repeats`` times; tokens/s medians and the ratio of the first (ours)
    to the fastest of the others."""
    peers = {peer: synced(fn, device) for peer, fn in peers.items()}
    for _ in range(warmup):
        for fn in peers.values():
            fn()
    samples = {peer: [] for peer in peers}
    for _ in range(repeats):
        for peer, fn in peers.items():
            samples[peer].append(timed(fn))
    quiet = [i for i in range(repeats) if all(samples[p][i][2] <= FOREIGN_CPU_LIMIT for p in peers)]
    kept = quiet if len(quiet) >= 2 else list(range(repeats))
    result = {"case": name, "tokens_per_call": tokens, "repeats": repeats, "kept": len(kept), "peers": {}}
    for peer in peers:
        times, cpu = [samples[peer][i][0] for i in kept], [samples[peer][i][1] for i in kept]
        result["peers"][peer] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "median_cpu_s": statistics.median(cpu),
            "tokens_per_s": tokens / statistics.median(times),
            "foreign_cpu": [round(samples[peer][i][2], 3) for i in range(repeats)],
        }
    # Ours against the fastest of the others.
    ours, *others = result["peers"]
    result["versus"] = min(others, key=lambda peer: result["peers"][peer]["median_s"])
    first, second = result["peers"][ours], result["peers"][result["versus"]]
    result["speedup"] = second["median_s"] / first["median_s"]
    result["cpu_time_speedup"] = second["median_cpu_s"] / first["median_cpu_s"]
    return result


def random_batch(batch: int, length: int, vocab: int, seed: int) -> Tensor:
    """``(B, L)`` token ids ending in EOS, lengths between L/2 and L, padded with PAD."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab, (batch, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    lengths[0] = length
    positions = torch.arange(length)[None, :]
    tokens[positions == lengths[:, None] - 1] = EOS
    return tokens.masked_fill(positions >= lengths[:, None], PAD)


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, src: Tensor, tgt: Tensor, bf16: bool = False
) -> Callable[[], None]:
    autocast = torch.autocast(src.device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast:
            logits = model(src, tgt[:, :-1])
        # As the trainer computes it: flat (B*T, V) logits (a transposed (B, V, T) view costs a copy).
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_training(
    config: TransformerConfig,
    batch: int,
    length: int,
    repeats: int,
    device: torch.device = torch.device("cpu"),
    bf16: bool = False,
    measure: Callable[..., dict] = compare,
) -> dict:
    torch.manual_seed(0)
    ours, ref = Transformer(config).train().to(device), TorchSeq2Seq(config).train().to(device)
    src, tgt = (
        random_batch(batch, length, config.src_vocab_size, 1),
        random_batch(batch, length + 1, config.tgt_vocab_size, 2),
    )
    tgt[:, 0] = BOS
    src, tgt = src.to(device), tgt.to(device)
    # Both with the fused Adam that attnlab's trainer builds (the optimiser is not what is compared).
    peers = {
        "attnlab": training_step(ours, torch.optim.Adam(ours.parameters(), lr=1e-4, fused=True), src, tgt, bf16),
        "nn.Transformer": training_step(ref, torch.optim.Adam(ref.parameters(), lr=1e-4, fused=True), src, tgt, bf16),
    }
    tokens = int(tgt[:, 1:].ne(PAD).sum() + src.ne(PAD).sum())
    name = "training (fwd+bwd+Adam)" + (", bf16" if bf16 else "")
    return measure(name, peers, tokens, repeats, warmup=2 if device.type == "cuda" else 1, device=device)


def marian(config: TransformerConfig):
    from transformers import MarianConfig, MarianMTModel

    hf_config = MarianConfig(
        vocab_size=config.tgt_vocab_size,
        d_model=config.d_model,
        encoder_layers=config.num_encoder_layers,
        decoder_layers=config.num_decoder_layers,
        encoder_attention_heads=config.num_heads,
        decoder_attention_heads=config.num_heads,
        encoder_ffn_dim=config.dim_feedforward,
        decoder_ffn_dim=config.dim_feedforward,
        activation_function=config.activation,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        max_position_embeddings=config.max_len,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
        # No forced EOS at the last step: both sides make exactly N tokens with EOS suppressed.
        forced_eos_token_id=None,
    )
    return MarianMTModel(hf_config).eval()


def bench_decoding(
    config: TransformerConfig,
    beam: int,
    batch: int,
    src_len: int,
    new_tokens: int,
    repeats: int,
    bf16: bool = False,
    device: torch.device = torch.device("cpu"),
    measure: Callable[..., dict] = compare,
) -> dict:
    """Ours against ``MarianMTModel.generate``. With ``bf16``, ours runs under bf16 autocast (its
    weights stay fp32; the decoding engine keeps bf16 copies) against both ways to run HF in
    bf16: under the same autocast, and with its weights cast to bf16. Ours decodes through the
    decoding engine, as ``attnlab.load``'s translators do."""
    torch.manual_seed(0)
    model, hf = Transformer(config).eval().to(device), marian(config).to(device)
    ours = DecodingEngine(model)
    src = random_batch(batch, src_len, config.src_vocab_size, 3).to(device)
    mask = src.ne(PAD)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    @torch.no_grad()
    def run_ours() -> Tensor:
        search = greedy_search if beam == 1 else beam_search
        kwargs = {} if beam == 1 else {"beam_size": beam}
        with autocast:
            out = search(ours, src, max_len_a=0.0, max_len_b=new_tokens, min_len=new_tokens, **kwargs).tokens
        assert out.shape[-1] == new_tokens, out.shape
        return out

    def hf_generate(model: nn.Module, autocast: torch.autocast) -> Callable[[], Tensor]:
        @torch.no_grad()
        def run() -> Tensor:
            with autocast:
                out = model.generate(
                    input_ids=src,
                    attention_mask=mask,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    num_beams=beam,
                    do_sample=False,
                    early_stopping=False,
                )
            assert out.shape[-1] == new_tokens + 1, out.shape  # + the decoder start token
            return out

        return run

    name = "greedy decoding" if beam == 1 else f"beam {beam} decoding"
    if not bf16:
        peers = {"attnlab (KV cache)": run_ours, "HF Marian generate": hf_generate(hf, autocast)}
    else:
        name += ", bf16"
        hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
        peers = {
            "attnlab (bf16 autocast)": run_ours,
            "HF (bf16 autocast)": hf_generate(hf, autocast),
            "HF (bf16 weights)": hf_generate(hf_bf16, contextlib.nullcontext()),
        }
    return measure(name, peers, batch * new_tokens, repeats, warmup=1, device=device)


def step_weights(model: Transformer) -> list[Tensor]:
    """The weight matrices one decoding step reads: every decoder layer's (the source-target keys
    and values excepted: those are projected once per search) and the output projection."""
    weights = [model.output.weight]
    for layer in model.decoder_layers:
        for name, p in layer.named_parameters():
            if p.ndim == 2:
                weights.append(p[: p.shape[1]] if name == "cross_attn.in_proj_weight" else p)  # W^Q only
    return weights


def weight_read_floor(config: TransformerConfig, repeats: int, device: torch.device = torch.device("cpu")) -> dict:
    """What a decoding step cannot beat on this machine: the time to read once every weight the
    step multiplies (``Tensor.sum`` over each, the median of ``repeats`` passes), in fp32 and bf16.
    Every search here reads them once per step, whatever the batch; the rest of a step is compute
    and overhead."""
    torch.manual_seed(0)
    model = Transformer(config).eval()
    result = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        weights = [w.detach().to(device, dtype).contiguous() for w in step_weights(model)]
        total = sum(w.numel() * w.element_size() for w in weights)

        def read(weights: list[Tensor] = weights) -> None:
            for w in weights:
                w.sum()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        read()
        times = [timed(read)[0] for _ in range(repeats)]
        seconds = statistics.median(times)
        result[name] = {"bytes": total, "seconds": seconds, "gb_per_s": total / seconds / 1e9}
    return result


def bench_rnn_variants(
    vocab: int, batch: int, length: int, new_tokens: int, repeats: int, device: torch.device = torch.device("cpu")
) -> dict:
    """Training and greedy tokens/s of each RNN seq2seq variant (bi-LSTM, "small" preset), interleaved:
    what each form of attention costs on top of the plain encoder-decoder."""
    torch.manual_seed(0)
    src, tgt = random_batch(batch, length, vocab, 1), random_batch(batch, length + 1, vocab, 2)
    tgt[:, 0] = BOS
    src, tgt = src.to(device), tgt.to(device)
    train_peers, decode_peers = {}, {}
    for name, variant in ATTENTION_VARIANTS.items():
        config = Seq2SeqConfig.from_preset(
            "small", src_vocab_size=vocab, tgt_vocab_size=vocab, cell="lstm", bidirectional=True, **variant
        )
        model = RNNSeq2Seq(config).to(device)
        train_peers[name] = training_step(model.train(), torch.optim.Adam(model.parameters(), lr=1e-4), src, tgt)
        decode_peers[name] = _greedy(RNNSeq2Seq(config).eval().to(device), src, new_tokens)
    train_tokens = int(tgt[:, 1:].ne(PAD).sum() + src.ne(PAD).sum())
    return {
        "training": compare("RNN training (fwd+bwd+Adam)", train_peers, train_tokens, repeats, warmup=1, device=device),
        "greedy": compare("RNN greedy decoding", decode_peers, batch * new_tokens, repeats, warmup=1, device=device),
    }


def _greedy(model: nn.Module, src: Tensor, new_tokens: int) -> Callable[[], Tensor]:
    def run() -> Tensor:
        return greedy_search(model, src, max_len_a=0.0, max_len_b=new_tokens, min_len=new_tokens).tokens

    return run


def print_rnn_table(results: dict) -> None:
    train, greedy = results["training"]["peers"], results["greedy"]["peers"]
    base_train, base_greedy = train["none"]["tokens_per_s"], greedy["none"]["tokens_per_s"]
    print(f"\n{'RNN seq2seq (bi-LSTM 256)':26} {'train tok/s':>11} {'vs none':>8} {'greedy tok/s':>12} {'vs none':>8}")
    for name in ATTENTION_VARIANTS:
        t, g = train[name]["tokens_per_s"], greedy[name]["tokens_per_s"]
        print(f"{name:26} {t:11.0f} {t / base_train:8.2f} {g:12.0f} {g / base_greedy:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 'small' preset and fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--rnn-only", action="store_true", help="only the RNN variants (issue: cost of each attention)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="sentences a batch (training, decoding, RNN variants)")
    parser.add_argument("--skip-rnn", action="store_true", help="leave out the RNN variants")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens a Transformer search makes (its steps)")
    parser.add_argument("--decoding-only", action="store_true", help="leave out Transformer training")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also decode in bf16 (ours and HF's two bf16 ways), and on CUDA train in bf16; "
        "on by default on CUDA and where the CPU has bf16",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "translation.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda, but this torch ({torch.__version__}) sees no CUDA device")
    if args.bf16 is None:
        args.bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else onednn.bf16_available()
    torch.set_num_threads(args.threads)
    preset = "small" if args.quick else "base"
    repeats = args.repeats or (3 if args.quick else 5)
    rnn = (
        None
        if args.skip_rnn
        else bench_rnn_variants(
            vocab=8000, batch=args.batch, length=32, new_tokens=32 if args.quick else 64, repeats=repeats, device=device
        )
    )
    if rnn is not None:
        print_rnn_table(rnn)
    if args.rnn_only:
        return
    config = TransformerConfig.from_preset(preset, src_vocab_size=8000, tgt_vocab_size=8000, share_embeddings=True)
    new_tokens = args.new_tokens  # a search's steps
    train = functools.partial(bench_training, config, batch=args.batch, length=32, repeats=repeats, device=device)
    decode = functools.partial(
        bench_decoding, config, batch=args.batch, src_len=32, new_tokens=new_tokens, device=device
    )
    beam_repeats = max(2, repeats - 2)
    results = ([] if args.decoding_only else [train()]) + [
        decode(beam=1, repeats=repeats),
        decode(beam=5, repeats=beam_repeats),
    ]
    if args.bf16:
        if device.type == "cuda" and not args.decoding_only:
            results.insert(1, train(bf16=True))
        results += [decode(beam=1, repeats=repeats, bf16=True), decode(beam=5, repeats=beam_repeats, bf16=True)]
    floor = weight_read_floor(config, repeats=max(5, repeats), device=device)
    print(
        f"\npreset {preset}, batch {args.batch}: d_model {config.d_model}, heads {config.num_heads}, "
        f"layers {config.num_encoder_layers}+{config.num_decoder_layers}, FFN {config.dim_feedforward}, "
        f"vocab {config.tgt_vocab_size}; "
        + (torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads")
    )
    print(
        f"{'case':24} {'peer':20} {'tokens/s':>9} {'median s':>9} {'min s':>8} {'cpu s':>7} {'others':>7} "
        f"{'kept':>5} {'speedup':>8} {'cpu-time':>8}"
    )
    for r in results:
        for i, (peer, p) in enumerate(r["peers"].items()):
            ratio = f"{r['speedup']:.2f}x" if peer == r["versus"] else ""
            cpu_ratio = f"{r['cpu_time_speedup']:.2f}x" if peer == r["versus"] else ""
            others = statistics.median(p["foreign_cpu"])
            print(
                f"{r['case'] if i == 0 else '':24} {peer:20} {p['tokens_per_s']:9.1f} {p['median_s']:9.3f} "
                f"{p['min_s']:8.3f} {p['median_cpu_s']:7.3f} {others:7.0%} {r['kept']:>2}/{r['repeats']:<2} "
                f"{ratio:>8} {cpu_ratio:>8}"
            )
    print(
        f"\nper decoding step ({new_tokens} steps a search, the encoder included): one read of the step's weights "
        "takes "
        + ", ".join(
            f"{p} {1e3 * f['seconds']:.2f} ms ({f['bytes'] / 1e6:.0f} MB at {f['gb_per_s']:.1f} GB/s)"
            for p, f in floor.items()
        )
    )
    for r in results:
        if "decoding" not in r["case"]:
            continue
        print(
            f"{r['case']:24} "
            + ", ".join(f"{peer} {1e3 * p['median_s'] / new_tokens:.2f} ms" for peer, p in r["peers"].items())
        )
    print(
        "speedup = median wall time of the fastest peer (the row it is on) / ours; "
        "cpu-time = the same for CPU seconds of this process; "
        "others = median share of all cores used by other processes while timing"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "preset": preset,
        "config": config.to_dict(),
        "batch": args.batch,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    args.out.write_text(
        json.dumps({"meta": meta, "results": results, "weight_read_floor": floor, "rnn_variants": rnn}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
