"""Export a 12 Hz Qwen3-TTS checkpoint to OpenVINO IR for the openvino backend.

    wyoming-qwen3tts-export-openvino --model DIR_OR_ID --output DIR [--weights int8]

What it writes, and why each piece has the shape it has:
- talker.xml: one talker step (embeds -> codec-head logits + hidden state) with
  its KV cache as OpenVINO state; converted directly from a lean torch step
  (step_graphs.py), not through ONNX, which measured slower per step
  (docs/backends.md).
- predictor.xml + predictor_head_NN.xml: one code-predictor step and its 15
  heads, one graph each, so a step reads only the head it needs. Its keys and
  values are explicit inputs and outputs, not state, and it takes any number of
  rows: the utterances in flight stand at the same predictor position, so one
  call (one read of its weights) serves them all. (Exports made before kept
  them as state, one row a call; they still work, row by row.)
- codec.xml: the codec decoder as a streaming chunk step with explicit state.
- speaker_encoder.xml, codec_encoder.xml (Base models): what clones a voice.
- tables/*.npy: the text embedding already passed through the text projection,
  the codec embeddings; the server memory-maps them, so only rows in use are
  resident and prompts are built without the torch model.
- the model's configs and tokenizer files, and manifest.json, which names the
  source model's fingerprint and the options; the server refuses an export
  that does not match the model it is asked to serve.
With --parts predictor only the code predictor, its heads, the configs and the
manifest are written: what the PyTorch backend's --predictor openvino-* runs
beside its own talker and codec (engine/split_steps.py).
Weights: int8 (symmetric, per channel; the default), int4 (symmetric, groups
of 128, heads kept int8), fp16 or fp32, by NNCF on the transformer steps; the
codec keeps float weights (fp16 storage; fp32 in an fp32 export).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import __version__

_LOGGER = logging.getLogger(__name__)

WEIGHTS = ("fp32", "fp16", "int8", "int4")
DEFAULT_WEIGHTS = "int8"
PARTS = ("all", "predictor")  # every graph, or the code predictor alone
MANIFEST = "manifest.json"
FORMAT = 1  # bump when the files an export holds change meaning
MAX_POSITIONS = 8192  # talker positions in the rotary table, as the PyTorch backend
COPIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
)
TEXT_ROWS_PER_BLOCK = 4096


class ExportError(Exception):
    """The export cannot be made or used; the message names the fix."""


def export_command(model: str, output: Path) -> str:
    """The command line that makes an export, for error messages."""
    return f"wyoming-qwen3tts-export-openvino --model {model} --output {output}"


# --- fingerprints ---------------------------------------------------------------------------------------


def _source_files(model_dir: Path) -> list[Path]:
    """What decides the exported graphs: configs and weights of the model and its speech tokenizer."""
    files = [model_dir / "config.json", model_dir / "generation_config.json"]
    files += sorted(model_dir.glob("*.safetensors"))
    files += [model_dir / "speech_tokenizer" / "config.json"]
    files += sorted((model_dir / "speech_tokenizer").glob("*.safetensors"))
    return [f for f in files if f.is_file()]


def _stat_key(model_dir: Path) -> dict[str, list[int]]:
    return {
        str(f.relative_to(model_dir)): [f.stat().st_size, f.stat().st_mtime_ns]
        for f in _source_files(model_dir)
    }


def source_fingerprint(model_dir: Path, known: dict[str, Any] | None = None) -> str:
    """sha256 over the model's configs and weights; reused from known if no file's size or mtime changed."""
    stats = _stat_key(model_dir)
    if known and known.get("files") == stats and known.get("fingerprint"):
        return str(known["fingerprint"])
    digest = hashlib.sha256()
    for f in _source_files(model_dir):
        digest.update(f"\0{f.relative_to(model_dir)}\0".encode())
        with f.open("rb") as stream:
            while block := stream.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


# --- the pieces -----------------------------------------------------------------------------------------


def _compress(model: Any, weights: str) -> Any:
    """NNCF weight compression of a graph's matrix products (fp32/fp16: none here, fp16 at save)."""
    if weights in ("fp32", "fp16"):
        return model
    import nncf

    if weights == "int8":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
    # int4 in groups of 128 (smaller where a width is no multiple of 128); NNCF keeps the last matrix
    # product (the talker's head) in int8.
    return nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.INT4_SYM,
        group_size=128,
        ratio=1.0,
        advanced_parameters=nncf.AdvancedCompressionParameters(
            group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST
        ),
    )


def _save(model: Any, path: Path, weights: str) -> None:
    import openvino as ov

    ov.save_model(model, str(path), compress_to_fp16=weights == "fp16")


def _convert_step(
    module: torch.nn.Module, hidden: int, kv_heads: int, head_dim: int, names: list, stateful: bool = True
) -> Any:
    """Trace a StackStep with dynamic lengths.

    stateful: each layer's past/present KV pair becomes OpenVINO state (the talker: one sequence per
    infer request, updated in place). Otherwise the pairs stay inputs and outputs and the number of
    rows is dynamic too (the predictor: rows at the same position step together in one call).
    """
    import openvino as ov
    from openvino._offline_transformations import apply_make_stateful_transformation

    rows = 1 if stateful else 2  # traced with 2 rows so that nothing fixes the batch at 1
    past = [torch.zeros(rows, kv_heads, 0, head_dim) for _ in names]
    example = (torch.randn(rows, 3, hidden), *past)
    batch = 1 if stateful else -1
    shapes = [ov.PartialShape([batch, -1, hidden])]
    shapes += [ov.PartialShape([batch, kv_heads, -1, head_dim])] * len(names)
    with torch.no_grad():
        model = ov.convert_model(module, example_input=example, input=shapes)
    model.inputs[0].get_tensor().set_names({"embeds"})
    outputs = len(model.outputs) - len(names)
    for index, (past_name, present_name) in enumerate(names):
        model.inputs[1 + index].get_tensor().set_names({past_name})
        model.outputs[outputs + index].get_tensor().set_names({present_name})
    for index, name in enumerate(("logits", "hidden")[-outputs:]):  # the predictor step has no logits
        model.outputs[index].get_tensor().set_names({name})
    if stateful:
        apply_make_stateful_transformation(model, dict(names))
    return model


def _convert_head(head: torch.nn.Module, width: int) -> Any:
    import openvino as ov

    with torch.no_grad():
        model = ov.convert_model(
            head, example_input=torch.randn(2, width), input=[ov.PartialShape([-1, width])]
        )
    model.inputs[0].get_tensor().set_names({"hidden"})
    model.outputs[0].get_tensor().set_names({"logits"})
    return model


def _text_table(talker: Any, dtype: np.dtype, path: Path) -> None:
    """Every text token through the text projection, once, written row block by row block."""
    embedding = talker.get_text_embeddings().weight
    rows, width = embedding.shape[0], talker.config.hidden_size
    table = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, width))
    with torch.no_grad():
        for start in range(0, rows, TEXT_ROWS_PER_BLOCK):
            block = embedding[start : start + TEXT_ROWS_PER_BLOCK].unsqueeze(0)
            table[start : start + block.shape[1]] = talker.text_projection(block)[0].numpy().astype(dtype)
    table.flush()
    del table


def _export_talker(talker: Any, weights: str, table_dtype: np.dtype, work: Path, say: Callable) -> None:
    """The embedding tables and the talker step."""
    from ..pytorch.steps import DecoderStack, _rotary_table
    from .step_graphs import StackStep, kv_names

    say("embedding tables (every text token through the text projection)")
    (work / "tables").mkdir()
    _text_table(talker, table_dtype, work / "tables" / "text.npy")
    np.save(work / "tables" / "codec.npy", talker.get_input_embeddings().weight.numpy().astype(table_dtype))
    predictor_tables = torch.stack([e.weight for e in talker.code_predictor.get_input_embeddings()])
    np.save(work / "tables" / "predictor_codec.npy", predictor_tables.numpy().astype(table_dtype))

    say(f"talker step ({len(talker.model.layers)} layers, {weights} weights)")
    cos, sin = _rotary_table(talker.model.rotary_emb, MAX_POSITIONS, torch.float32, rows=3)
    stack = DecoderStack(talker.model.layers, talker.model.norm, cos, sin)
    names = kv_names(len(stack.layers))
    graph = _convert_step(
        StackStep(stack, talker.codec_head, None).eval(),
        talker.config.hidden_size,
        stack.kv_heads,
        stack.head_dim,
        names,
    )
    _save(_compress(graph, weights), work / "talker.xml", weights)
    del graph, stack


def export_model(
    model_dir: Path,
    output: Path,
    weights: str = DEFAULT_WEIGHTS,
    progress: Callable[[str], None] = print,
    parts: str = "all",
) -> Path:
    """Export the checkpoint in model_dir to output (written beside, then moved into place); parts
    "predictor" writes only the code predictor (see the module docstring)."""
    with warnings.catch_warnings():
        # Tracing compares a second run with the first and warns of float rounding: nothing to act on.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*trace might not generalize.*")
        return _export(model_dir, output, weights, progress, parts)


def _export(model_dir: Path, output: Path, weights: str, progress: Callable[[str], None], parts: str) -> Path:
    import nncf
    import openvino as ov

    from ...voices import model_fingerprint
    from ..pytorch.steps import DecoderStack, _rotary_table
    from ..qwen_import import import_qwen_tts
    from .codec import export_codec
    from .step_graphs import StackStep, kv_names

    if weights not in WEIGHTS:
        raise ExportError(f"--weights {weights!r}: choose one of {', '.join(WEIGHTS)}")
    if parts not in PARTS:
        raise ExportError(f"--parts {parts!r}: choose one of {', '.join(PARTS)}")
    everything = parts == "all"
    started = time.monotonic()
    kind_steps = 7 if everything else 3
    step = iter(range(1, kind_steps + 1))

    def say(text: str) -> None:
        progress(f"[{next(step)}/{kind_steps}] {text} ({time.monotonic() - started:.0f} s)")

    work = output.with_name(output.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    say(f"loading {model_dir} and fingerprinting its weights")
    fingerprint = source_fingerprint(model_dir)
    tts = import_qwen_tts().Qwen3TTSModel.from_pretrained(str(model_dir), dtype=torch.float32)
    model = tts.model.eval().requires_grad_(False)
    talker = model.talker
    predictor = talker.code_predictor
    kind = model.tts_model_type
    table_dtype = np.dtype(np.float32 if weights == "fp32" else np.float16)
    clone_fingerprint = None
    if kind == "base":
        clone_fingerprint = model_fingerprint(
            [
                ("speaker_encoder", model.speaker_encoder),
                ("codec_encoder", model.speech_tokenizer.model.encoder),
            ]
        )

    if everything:
        _export_talker(talker, weights, table_dtype, work, say)
    say(f"code predictor step and its {len(predictor.lm_head)} heads")
    groups = talker.config.num_code_groups
    cos, sin = _rotary_table(predictor.model.rotary_emb, groups + 1, torch.float32, rows=None)
    stack = DecoderStack(predictor.model.layers, predictor.model.norm, cos, sin)
    projection = predictor.small_to_mtp_projection
    graph = _convert_step(
        StackStep(stack, None, projection).eval(),
        talker.config.hidden_size,
        stack.kv_heads,
        stack.head_dim,
        kv_names(len(stack.layers)),
        stateful=False,
    )
    _save(_compress(graph, weights), work / "predictor.xml", weights)
    width = predictor.config.hidden_size
    for group, head in enumerate(predictor.lm_head):
        # int4 keeps the heads int8: each is the last matrix product before a drawn code.
        head_weights = "int8" if weights == "int4" else weights
        _save(
            _compress(_convert_head(head, width), head_weights),
            work / f"predictor_head_{group:02d}.xml",
            weights,
        )
    del graph, stack

    if everything:
        say("codec decoder (streaming chunk step)")
        # The codec is bound by compute, not by reading weights: int8 saved no time and cost ~20 dB of SNR
        # on the random-weight codec (engine/openvino/codec.py), so it stays in float (fp16 storage).
        export_codec(model.speech_tokenizer.model.decoder, work, "fp32" if weights == "fp32" else "fp16")

        if kind == "base":
            from .encoders import export_encoders

            say("speaker encoder and reference-audio encoder (voice cloning)")
            export_encoders(model, work)
        else:
            say("no voice-cloning encoders (not a Base model)")

    say("configs, tokenizer and manifest")
    for name in COPIED_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, work / name)
    manifest = {
        "format": FORMAT,
        "weights": weights,
        "parts": parts,
        "model_kind": kind,
        "max_positions": MAX_POSITIONS,
        "source": {
            "path": str(model_dir.resolve()),
            "fingerprint": fingerprint,
            "files": _stat_key(model_dir),
        },
        "clone_fingerprint": clone_fingerprint,
        "versions": {"openvino": ov.__version__, "nncf": nncf.__version__, "wyoming_qwen3tts": __version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "export_seconds": round(time.monotonic() - started, 1),
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(output, ignore_errors=True)
    work.rename(output)
    progress(f"Exported {model_dir} to {output} ({weights} weights) in {time.monotonic() - started:.0f} s")
    return output


def read_manifest(export_dir: Path) -> dict[str, Any]:
    """The manifest of an export directory, or ExportError naming what is missing."""
    path = export_dir / MANIFEST
    if not path.is_file():
        raise ExportError(f"{export_dir} holds no OpenVINO export ({MANIFEST} is missing)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportError(f"{path} is not readable ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ExportError(
            f"{export_dir} was made by another version of the exporter (format {manifest.get('format')})"
        )
    return manifest


def main(argv: list[str] | None = None) -> int:
    """The export command: wyoming-qwen3tts-export-openvino."""
    from ..model_files import ModelError, resolve_model_dir

    parser = argparse.ArgumentParser(
        prog="wyoming-qwen3tts-export-openvino",
        description="Export a Qwen3-TTS 12 Hz checkpoint to OpenVINO IR for --backend openvino.",
    )
    parser.add_argument("--model", required=True, help="local model directory, or a model id in --data-dir")
    parser.add_argument("--output", required=True, type=Path, help="directory to write the export to")
    parser.add_argument(
        "--weights", default=DEFAULT_WEIGHTS, choices=WEIGHTS, help="weight format (default int8)"
    )
    parser.add_argument(
        "--parts",
        default="all",
        choices=PARTS,
        help="all graphs (for --backend openvino), or the code predictor alone (for --predictor openvino-*)",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where model ids are looked for")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        model_dir = resolve_model_dir(args.model, args.data_dir)
        export_model(model_dir, args.output, args.weights, parts=args.parts)
    except (ModelError, ExportError) as err:
        print(f"wyoming-qwen3tts-export-openvino: error: {err}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
