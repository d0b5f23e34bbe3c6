"""What seeing attention costs: a forward with no, one and all layers' maps captured, against HF's eager path.

Per model, its peers run interleaved in one process (A B C D A B C D ..., after a warm-up, on
``--threads`` threads, inference mode, fp32, random init); median forward times are reported with
their ratios to the plain fused forward (``none``). Hugging Face models (a BERT-base-sized
``BertModel`` on a padded batch, a ViT-S/16-sized ``ViTModel``):

- ``none``: ``attn_implementation="sdpa"``, no attentions;
- ``eager``: the same weights with ``"eager"`` and ``output_attentions=True`` (what HF needs for maps);
- ``one``, ``all``: SDPA under ``attnlab.viz.hf_capture.capture_huggingface`` of the last layer / all.

attnlab's own models (the base Transformer, teacher-forced, and ViT-S/16) have ``none``, ``one`` (the
last layer of every kind: a Transformer's encoder-self, decoder-self and cross) and ``all``, through
``attnlab.viz.capture.capture``; their rows are left out, with a note, where that does not import.

Memory: each peer once more in a fresh interpreter, after a warm-up call: peak RSS above the set-up
(MiB, ``benchmarks.common.peak_rss_of``), and the bytes of the maps the call returns.

Targets (issue 14): all layers captured costs less than HF's eager path; one layer <= 10% over none.

Usage: ``python -m benchmarks.capture [--quick] [--repeats N] [--threads 2] [--no-memory] [--out PATH]``
(``--quick``: tiny models, to check that it runs; the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import gc
import platform
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from attnlab.viz.hf_capture import capture_huggingface
from benchmarks.common import RESULTS, interleave, peak_rss_mib, peak_rss_of, reset_peak_rss, summary, write_json_to

Peer = Callable[[], int]  # one forward; returns the bytes of the maps it returned or captured

# Sizes per model: (full, quick).
HF_BERT = (
    {"config": {}, "batch": 4, "length": 128},  # BertConfig's defaults are BERT-base
    {"config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
     "batch": 2, "length": 16},
)  # fmt: skip
HF_VIT = (
    {"config": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536},
     "batch": 8},
    {"config": {"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 128}, "batch": 2},
)  # fmt: skip
ATTNLAB_TRANSFORMER = ({"preset": "base", "batch": 4, "length": 64}, {"preset": "tiny", "batch": 2, "length": 16})
ATTNLAB_VIT = ({"name": "vit_small_patch16_224", "batch": 8}, {"name": "vit_mnist_patch4_28", "batch": 2})


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def maps_bytes(maps) -> int:
    return nbytes(m.weights for m in maps)


def hf_peers(sdpa: torch.nn.Module, eager: torch.nn.Module, inputs: dict) -> dict[str, Peer]:
    """The four Hugging Face peers on the same weights and inputs."""

    def none() -> int:
        sdpa(**inputs)
        return 0

    def eager_attentions() -> int:
        return nbytes(eager(**inputs, output_attentions=True).attentions)

    def captured(layers) -> Peer:
        def run() -> int:
            with capture_huggingface(sdpa, layers=layers) as maps:
                sdpa(**inputs)
            return maps_bytes(maps)

        return run

    return {"none": none, "eager": eager_attentions, "one": captured(-1), "all": captured(None)}


def hf_pair(model_class, config_class, config: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """An SDPA model and an eager copy of its random weights."""
    torch.manual_seed(0)
    sdpa = model_class(config_class(**config, attn_implementation="sdpa")).eval()
    eager = model_class(config_class(**config, attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    return sdpa, eager


def hf_bert(quick: bool) -> dict[str, Peer]:
    size = HF_BERT[quick]
    sdpa, eager = hf_pair(transformers.BertModel, transformers.BertConfig, size["config"])
    ids = torch.randint(1000, sdpa.config.vocab_size, (size["batch"], size["length"]))
    mask = torch.ones_like(ids)
    mask[0, size["length"] * 3 // 4 :] = 0  # one padded sentence: the masks of a real batch
    return hf_peers(sdpa, eager, {"input_ids": ids, "attention_mask": mask})


def hf_vit(quick: bool) -> dict[str, Peer]:
    size = HF_VIT[quick]
    sdpa, eager = hf_pair(transformers.ViTModel, transformers.ViTConfig, size["config"])
    side = sdpa.config.image_size
    return hf_peers(sdpa, eager, {"pixel_values": torch.randn(size["batch"], 3, side, side)})


def attnlab_peers(model: torch.nn.Module, inputs: tuple) -> dict[str, Peer]:
    """None, one (the last layer of every kind) and all layers captured by ``attnlab.viz.capture``."""
    from attnlab.viz.capture import capture

    def none() -> int:
        model(*inputs)
        return 0

    def captured(layers) -> Peer:
        def run() -> int:
            with capture(model, layers=layers) as maps:
                model(*inputs)
            return maps_bytes(maps)

        return run

    return {"none": none, "one": captured(-1), "all": captured(None)}


def attnlab_transformer(quick: bool) -> dict[str, Peer]:
    from attnlab.models.transformer import Transformer
    from attnlab.models.transformer_config import TransformerConfig

    size = ATTNLAB_TRANSFORMER[quick]
    torch.manual_seed(0)
    config = TransformerConfig.from_preset(size["preset"], src_vocab_size=8000, tgt_vocab_size=8000, dropout=0.0)
    model = Transformer(config).eval()
    src, tgt = (torch.randint(4, 8000, (size["batch"], size["length"])) for _ in range(2))
    return attnlab_peers(model, (src, tgt))


def attnlab_vit(quick: bool) -> dict[str, Peer]:
    from attnlab.models.vit import ViT, vit_config

    size = ATTNLAB_VIT[quick]
    torch.manual_seed(0)
    config = vit_config(size["name"], num_classes=10)
    model = ViT(config).eval()
    images = torch.randn(size["batch"], config.in_channels, config.image_size, config.image_size)
    return attnlab_peers(model, (images,))


CASES: dict[str, Callable[[bool], dict[str, Peer]]] = {
    "hf_bert_base": hf_bert,
    "hf_vit_s16": hf_vit,
    # attnlab's own models: rows only where attnlab.viz.capture imports (see attnlab_available)
    "attnlab_transformer_base": attnlab_transformer,
    "attnlab_vit_s16": attnlab_vit,
}


def attnlab_available() -> str | None:
    """None when ``attnlab.viz.capture.capture`` imports, else why not."""
    try:
        from attnlab.viz.capture import capture  # noqa: F401
    except ImportError as error:
        return f"attnlab.viz.capture does not import ({error}): attnlab rows left out"
    return None


def measure(case: str, args: argparse.Namespace) -> dict:
    """Interleaved median times, maps bytes and (unless --no-memory) peak RSS of every peer of ``case``."""
    with torch.inference_mode():
        peers = CASES[case](args.quick)
        map_bytes = {name: run() for name, run in peers.items()}
        times, dropped = interleave(peers, repeats=args.repeats)
    stats = {name: summary(samples) for name, samples in times.items()}
    none = stats["none"]["median_ms"]
    row = {
        "case": case,
        "dropped_noisy": dropped,
        "peers": stats,
        "ratio_to_none": {name: s["median_ms"] / none for name, s in stats.items()},
        "maps_mib": {name: b / 2**20 for name, b in map_bytes.items()},
    }
    if "eager" in stats:
        row["all_over_eager"] = stats["all"]["median_ms"] / stats["eager"]["median_ms"]
    if not args.no_memory:
        flags = [case, str(args.threads)] + (["quick"] if args.quick else ["full"])
        row["peak_mib"] = {name: peak_rss_of("benchmarks.capture", [*flags, name]) for name in peers}
    return row


def memory_case(argv: list[str]) -> None:
    """Child process: set up one case, warm its peer up, run it once, print the peak RSS above the set-up (MiB)."""
    case, threads, quick, peer = argv
    torch.set_num_threads(int(threads))
    with torch.inference_mode():
        run = CASES[case](quick == "quick")[peer]
        run()
        gc.collect()
        base = reset_peak_rss()
        run()
    print(peak_rss_mib() - base)


def print_row(row: dict) -> None:
    ms, ratio = row["peers"], row["ratio_to_none"]
    cells = " | ".join(f"{name} {s['median_ms']:8.1f} ms (x{ratio[name]:.2f})" for name, s in ms.items())
    extra = f" | all/eager x{row['all_over_eager']:.2f}" if "all_over_eager" in row else ""
    print(f"{row['case']:<25} {cells}{extra}" + (f" | dropped {row['dropped_noisy']}" if row["dropped_noisy"] else ""))
    maps = " ".join(f"{name} {mib:.3g}" for name, mib in row["maps_mib"].items())
    print(f"{'':25} maps MiB: {maps}")
    if "peak_mib" in row:
        print(f"{'':25} peak MiB above set-up: " + " ".join(f"{k} {v:.0f}" for k, v in row["peak_mib"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models and few repeats: a smoke run")
    parser.add_argument("--repeats", type=int, help="timed rounds per peer (3 with --quick, else 9)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--out", type=Path, default=RESULTS / "capture.json")
    parser.add_argument("--memory-case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        return memory_case(args.memory_case)
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (3 if args.quick else 9)
    missing = attnlab_available()
    cases = [case for case in CASES if not (missing and case.startswith("attnlab_"))]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, fp32")
    print("median forward ms (x: ratio to none); targets: all < eager, one <= 1.10 x none")
    if missing:
        print(missing)
    rows = []
    for case in cases:
        rows.append(measure(case, args))
        print_row(rows[-1])
    report = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "memory_case"},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.processor() or platform.machine(),
        "note": missing,
        "rows": rows,
    }
    write_json_to(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
