"""bf16 decoding steps on CPU: the step kernel's plain products against SDPA, in one process.

Greedy and beam-5 search of a randomly initialised base Transformer under bf16 autocast (batch 8,
source 32 tokens, 64 new tokens forced), interleaved by ``benchmarks.common.interleave`` (a
warm-up round, noisy rounds dropped) between the default thresholds (bf16 steps take the plain
products) and ``cpu_step_plain_max_keys_bfloat16=0`` (bf16 steps take SDPA), and the tokens of
both compared.

    python -m benchmarks.bf16_steps --threads 2
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from attnlab.decoding import beam_search, greedy_search
from attnlab.functional.kernels.thresholds import Thresholds, set_thresholds
from attnlab.inference.engine import DecodingEngine
from attnlab.models.transformer import Transformer, TransformerConfig
from benchmarks.common import interleave, summary, write_json

SIDES = {"plain products": Thresholds(), "SDPA": Thresholds(cpu_step_plain_max_keys_bfloat16=0)}


def search(engine: DecodingEngine, src: torch.Tensor, kind: str) -> torch.Tensor:
    """One search under bf16 autocast; the tokens ``(B, T)``."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        if kind == "greedy":
            return greedy_search(engine, src, max_len_a=0, max_len_b=64, min_len=64).tokens
        return beam_search(engine, src, beam_size=5, max_len_a=0, max_len_b=64, min_len=64).tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = TransformerConfig.from_preset("base", src_vocab_size=8000, tgt_vocab_size=8000, share_embeddings=True)
    engine = DecodingEngine(Transformer(config).eval())
    src = torch.randint(4, 8000, (8, 32))
    rows = []
    for kind in ("greedy", "beam5"):
        tokens = {}

        def side(name: str, thresholds: Thresholds, kind: str = kind, tokens: dict = tokens) -> Callable[[], None]:
            def run() -> None:
                set_thresholds(thresholds)
                tokens[name] = search(engine, src, kind)

            return run

        times, dropped = interleave({name: side(name, t) for name, t in SIDES.items()}, args.repeats)
        set_thresholds(None)
        median = {name: summary(t)["median_ms"] for name, t in times.items()}
        differing = int((tokens["plain products"] != tokens["SDPA"]).sum())
        row = {"search": kind, "median_ms": median, "sdpa_over_plain": median["SDPA"] / median["plain products"]}
        row.update(tokens_differing=differing, dropped_noisy=dropped)
        rows.append(row)
        print(
            f"{kind:<7} plain products {median['plain products']:7.1f} ms  SDPA {median['SDPA']:7.1f} ms  "
            f"SDPA / plain {row['sdpa_over_plain']:.2f}  tokens differing {differing} of {tokens['SDPA'].numel()}"
        )
    print(f"wrote {write_json('bf16_steps', {'threads': args.threads, 'repeats': args.repeats, 'rows': rows})}")


if __name__ == "__main__":
    main()
