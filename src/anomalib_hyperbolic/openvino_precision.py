"""OpenVINO at its default precision: keep a graph's precision-sensitive part in f32, and find that part.

On CPUs with bf16 units (AVX512-BF16, AMX), OpenVINO's CPU plugin runs an f32 model in bf16 by
default (``INFERENCE_PRECISION_HINT`` = ``bf16``): about 2x faster, and what an edge user gets. bf16
keeps 8 bits of mantissa, so every value is rounded by up to 2^-9 of itself. That is harmless for a
backbone's features, but not for a score whose useful signal is small next to its magnitude: an
image score of 10 +- 0.05 is rounded by up to 0.02, a large part of the spread between normal and
defective images once anomalib's post-processor rescales by the (small) range of the normal scores.

The fix at the right depth is to run the scoring part of the graph (what turns features into maps
and scores, and the post-processing) in f32 and leave the backbone, where the time is spent, in
bf16. This module does it with OpenVINO's own mechanism:

* :func:`name_onnx_nodes_by_scope` renames every node of an ONNX export after the torch module that
  produced it (``model.discriminator/node_Gemm_3``), from the ``pkg.torch.onnx.name_scopes``
  metadata of torch's exporter. OpenVINO's ONNX frontend keeps node names, so the IR says where
  each operation comes from (and so do ONNX exports, for anyone reading them).
* :func:`keep_in_f32` marks nodes with the run-time attribute ``precise_0``, which OpenVINO's
  serializer writes as ``DisablePrecisionConversion`` (formerly ``DisableFP16Compression``) and its
  CPU plugin honours by running those nodes at their original precision under a bf16/f16 inference
  precision (openvinotoolkit/openvino#21440). OpenVINO's own mixed-precision tooling uses the same key.
* :class:`F32ScopesExportMixin` gives an ``AnomalibModule`` both, through anomalib's own
  ``to_onnx``/``to_openvino`` (``anomalib export --export_type openvino`` included): a model lists
  the module scopes to keep in f32 in ``openvino_f32_scopes``.
* :func:`precision_report` is the per-layer and per-scope comparison of f32 and default precision on
  real images that chooses those scopes (``anomalib-hyperbolic precision-report``).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomalib_hyperbolic.openvino_runtime import compile_model, infer, median_seconds

logger = logging.getLogger(__name__)

#: OpenVINO's run-time-info key for "keep this node at its original precision" (``ov::DisablePrecisionConversion``).
KEEP_PRECISION_KEY = "precise_0"
#: ONNX node metadata written by torch's (dynamo) exporter: the module path of the node, as a Python list literal.
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
#: Outputs of an anomalib model's exported graph that the report compares.
SCORE_OUTPUT, MAP_OUTPUT = "pred_score", "anomaly_map"


def node_scope(name_scopes: str) -> str:
    """The module path of an ONNX node from its ``name_scopes`` metadata (``''`` for the root module).

    ``"['', 'model', 'model.blur', 'conv2d_15']"`` gives ``"model.blur"``: the last entry is the
    operation, the one before it the innermost module.
    """
    try:
        scopes = ast.literal_eval(name_scopes)
    except (ValueError, SyntaxError):
        return ""
    if not isinstance(scopes, list) or len(scopes) < 2:
        return ""
    return str(scopes[-2])


def name_onnx_nodes_by_scope(onnx_path: str | Path) -> int:
    """Prefix each node name of an ONNX file with the module path it came from; returns how many were renamed.

    Node names are labels only (edges are value names), so the graph computes the same. Nodes without
    the exporter's metadata, or of the root module, keep their names.
    """
    import onnx

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    renamed = 0
    for node in model.graph.node:
        metadata = {entry.key: entry.value for entry in node.metadata_props}
        scope = node_scope(metadata.get(NAME_SCOPES_KEY, ""))
        if scope and not node.name.startswith(scope + "/"):
            node.name = f"{scope}/{node.name}"
            renamed += 1
    onnx.save(model, str(onnx_path))
    return renamed


def in_scopes(name: str, scopes: Iterable[str]) -> bool:
    """Whether an (OpenVINO or ONNX) node name lies in one of the module ``scopes`` (or below it).

    A scope written ``!scope`` excludes its nodes: ``("model", "!model.feature_extractor")`` is the
    torch model without its backbone.
    """
    module = name.split("/", 1)[0] if "/" in name else ""

    def within(scope: str) -> bool:
        return module == scope or module.startswith(scope + ".")

    scopes = list(scopes)
    excluded = [scope[1:] for scope in scopes if scope.startswith("!")]
    included = [scope for scope in scopes if not scope.startswith("!")]
    return any(map(within, included)) and not any(map(within, excluded))


def keep_in_f32(model: Any, select: Callable[[Any], bool]) -> int:
    """Mark the operations of an ``openvino.Model`` chosen by ``select(node)`` to run in f32; returns the count.

    Parameters and results are left alone (their precision is the model's interface).
    """
    marked = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() in ("Parameter", "Result") or not select(node):
            continue
        node.get_rt_info()[KEEP_PRECISION_KEY] = ""
        marked += 1
    return marked


def keep_scopes_in_f32(xml: str | Path, scopes: Sequence[str], compress_to_fp16: bool = False) -> int:
    """Rewrite an OpenVINO IR with the nodes of the module ``scopes`` kept in f32; returns how many were marked.

    The IR is read, marked and saved beside itself, then moved over the original (its weights file
    may be memory-mapped while it is read). ``compress_to_fp16`` is how the IR was saved.
    """
    import openvino as ov

    xml = Path(xml)
    model = ov.Core().read_model(str(xml))
    marked = keep_in_f32(model, lambda node: in_scopes(node.get_friendly_name(), scopes))
    if marked == 0:
        msg = f"no node of {xml} lies in the scopes {list(scopes)}: were its ONNX nodes named by scope?"
        raise ValueError(msg)
    with tempfile.TemporaryDirectory(dir=xml.parent) as scratch:
        marked_xml = Path(scratch) / xml.name
        ov.save_model(model, str(marked_xml), compress_to_fp16=compress_to_fp16)
        del model
        os.replace(marked_xml, xml)
        os.replace(marked_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
    return marked


class F32ScopesExportMixin:
    """Mixin for an ``AnomalibModule``: exports whose nodes are named by module, with ``openvino_f32_scopes`` in f32.

    Both hooks wrap anomalib's own ``to_onnx`` / ``to_openvino`` (so ``Engine.export`` and
    ``anomalib export`` use them): the ONNX file's nodes are named after their torch modules, and the
    OpenVINO IR keeps the listed module scopes (e.g. ``("model.discriminator", "post_processor")``)
    in f32 under a bf16/f16 inference precision. A mixin, not an ``AnomalibModule``, so that anomalib
    does not list it as a model.
    """

    #: module scopes of the exported graph to run in f32 at OpenVINO's default precision
    openvino_f32_scopes: tuple[str, ...] = ()

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """Anomalib's ``to_onnx``, then the nodes are named by module scope."""
        onnx_path = super().to_onnx(*args, **kwargs)  # type: ignore[misc]
        name_onnx_nodes_by_scope(onnx_path)
        return onnx_path

    def to_openvino(self, *args: Any, **kwargs: Any) -> Path:
        """Anomalib's ``to_openvino``, then ``openvino_f32_scopes`` are marked to run in f32."""
        from anomalib.deploy import CompressionType

        xml = super().to_openvino(*args, **kwargs)  # type: ignore[misc]
        bound = inspect.signature(super().to_openvino).bind_partial(*args, **kwargs)  # type: ignore[misc]
        compression = bound.arguments.get("compression_type")
        if self.openvino_f32_scopes and compression in (None, CompressionType.FP16):
            # INT8 exports are quantised by NNCF: their precision is chosen there, not here
            marked = keep_scopes_in_f32(xml, self.openvino_f32_scopes, compress_to_fp16=compression is not None)
            logger.info("OpenVINO export: %d nodes of %s kept in f32", marked, list(self.openvino_f32_scopes))
        return xml


# ---------------------------------------------------------------------------------------------
# finding the precision-sensitive part: per-layer and per-scope comparison on real images
# ---------------------------------------------------------------------------------------------


def load_images(paths: Sequence[str | Path], image_size: int) -> list[np.ndarray]:
    """RGB images as ``(1, 3, S, S)`` float32 arrays in [0, 1], the input of an anomalib export."""
    import torch
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import resize

    arrays = []
    for path in paths:
        try:
            image = decode_image(str(path), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as error:
            msg = f"cannot read image {str(path)!r}: {error}"
            raise ValueError(msg) from error
        image = resize(image.to(torch.float32) / 255.0, [image_size, image_size], antialias=True)
        arrays.append(image.unsqueeze(0).numpy())
    return arrays


def _outputs(compiled: Any, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    request = compiled.create_infer_request()
    return [infer(request, image) for image in images]


def _deviation(reference: list[np.ndarray], other: list[np.ndarray], reduce: Callable = np.max) -> float:
    """``reduce`` (max, mean) of |difference| over all elements, in units of the reference's std.

    The std is taken over all images and positions.

    Integer outputs (indices of a top-k, a selection) give the share of elements that differ.
    """
    stacked = np.stack([value.astype(np.float64) for value in reference])
    changed = np.stack([value.astype(np.float64) for value in other])
    if not np.issubdtype(reference[0].dtype, np.floating):
        return float(np.mean(changed != stacked))
    spread = float(stacked.std()) or 1.0
    return float(reduce(np.abs(changed - stacked)) / spread)


def reduced_precision_nodes(compiled: Any) -> list[str]:
    """Names of the compiled graph's operations that run in bf16 or f16 (layout reorders left out)."""
    names = []
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        if "runtimePrecision" not in info or info["layerType"].astype(str) == "Reorder":
            continue
        if info["runtimePrecision"].astype(str) in ("bf16", "f16"):
            names.append(node.get_friendly_name())
    return names


def _median_ms(compiled: Any, image: np.ndarray, runs: int = 20) -> float:
    request = compiled.create_infer_request()
    return 1000 * median_seconds(lambda: request.infer([image]), runs, warmup=3)


#: the top-level modules of an ``AnomalibModule``'s exported graph
TOP_LEVEL_SCOPES = ("pre_processor", "model", "post_processor")


def scope_candidates(model: Any, depth: int = 2) -> list[str]:
    """Module scopes of an IR down to ``depth`` (``model.discriminator``...), in graph order."""
    seen: dict[str, None] = {}
    for node in model.get_ordered_ops():
        name = node.get_friendly_name()
        module = name.split("/", 1)[0]
        if "/" in name and module.split(".")[0] in TOP_LEVEL_SCOPES:
            seen[".".join(module.split(".")[:depth])] = None
    return list(seen)


def precision_report(
    xml: str | Path,
    images: Sequence[np.ndarray],
    scopes: Sequence[Sequence[str]] | None = None,
    per_layer: int = 15,
    timing_runs: int = 20,
) -> dict[str, Any]:
    """Compare an exported graph at f32 and at OpenVINO's default precision on ``images``.

    Returns ``{"variants": [...], "layers": [...]}``:

    * ``variants``: for the plain graph and for the graph with each entry of ``scopes`` kept in f32
      (default: each module scope of depth 2 alone, and everything but the first one, i.e. all but the
      backbone), the largest deviation of ``pred_score`` and ``anomaly_map`` from f32 (in units of
      their spread over the images) and the batch-1 latency;
    * ``layers``: the ``per_layer`` operations whose mean deviation from f32 grows most over that
      of their inputs (the same units; for integer outputs such as top-k indices, the share of
      elements that differ): where precision is lost. Probing every output keeps OpenVINO from
      fusing those nodes, so this view is indicative; the variants are the graph as deployed.
    """
    import openvino as ov

    core = ov.Core()
    base = core.read_model(str(xml))
    compiled_f32 = compile_model(base, "f32")  # the reference outputs and the f32 latency
    reference = _outputs(compiled_f32, images)
    names = [name for name in (SCORE_OUTPUT, MAP_OUTPUT) if name in reference[0]]
    if scopes is None:
        candidates = scope_candidates(base)
        # each scope alone, then everything after the first module of the model (its backbone)
        backbone = next((scope for scope in candidates if scope.startswith("model.")), None)
        scopes = [[scope] for scope in candidates if scope != "model"]
        if backbone is not None:
            scopes.append(["model", "post_processor", f"!{backbone}"])
    variants = []
    for kept in [[], *[list(entry) for entry in scopes]]:
        with tempfile.TemporaryDirectory() as scratch:
            # the mark takes effect through the IR: OpenVINO's serializer turns it into the attribute
            marked_xml = Path(scratch) / "model.xml"
            shutil.copy(xml, marked_xml)
            shutil.copy(Path(xml).with_suffix(".bin"), marked_xml.with_suffix(".bin"))
            marked = keep_scopes_in_f32(marked_xml, kept) if kept else 0
            compiled = compile_model(core.read_model(str(marked_xml)), None)
        outputs = _outputs(compiled, images)
        row: dict[str, Any] = {
            "f32_scopes": kept,
            "marked_nodes": marked,
            "reduced_precision_nodes": len(reduced_precision_nodes(compiled)),
        }
        for name in names:
            row[f"{name}_deviation"] = _deviation([o[name] for o in reference], [o[name] for o in outputs])
        row["latency_ms"] = _median_ms(compiled, images[0], timing_runs)
        variants.append(row)
    f32_latency = _median_ms(compiled_f32, images[0], timing_runs)
    variants.append({"f32_scopes": ["(all: f32)"], "latency_ms": f32_latency})

    layers: list[dict[str, Any]] = []
    if per_layer:
        probed = core.read_model(str(xml))
        nodes = [
            node
            for node in probed.get_ordered_ops()
            if node.get_type_name() not in ("Parameter", "Result", "Constant", "ShapeOf")
            and node.get_output_size() == 1
            and node.get_output_element_type(0) in (ov.Type.f32, ov.Type.i64, ov.Type.i32)
            # a graph output is compared already, and adding it again would not add a port
            and not any(target.get_node().get_type_name() == "Result" for target in node.output(0).get_target_inputs())
        ]
        probed.add_outputs([node.output(0) for node in nodes])
        values = {precision: [] for precision in ("f32", None)}
        for precision, store in values.items():
            request = compile_model(probed, precision).create_infer_request()
            for image in images:
                result = request.infer([image]).to_tuple()
                offset = len(result) - len(nodes)  # the probes come after the graph's own outputs
                store.append([np.array(result[offset + index]) for index in range(len(nodes))])
        deviation = {
            node.get_friendly_name(): _deviation([v[i] for v in values["f32"]], [v[i] for v in values[None]], np.mean)
            for i, node in enumerate(nodes)
        }
        for node in nodes:
            inputs = [
                deviation.get(source.get_node().get_friendly_name(), 0.0)
                for source in (node.input_value(i) for i in range(node.get_input_size()))
            ]
            layers.append(
                {
                    "node": node.get_friendly_name(),
                    "type": node.get_type_name(),
                    "deviation": deviation[node.get_friendly_name()],
                    "input_deviation": max(inputs, default=0.0),
                }
            )
        layers.sort(key=lambda row: row["deviation"] - row["input_deviation"], reverse=True)
        layers = layers[:per_layer]
    return {"variants": variants, "layers": layers}


def format_report(report: dict[str, Any]) -> str:
    """Markdown tables of :func:`precision_report`."""
    lines = [
        "| kept in f32 | nodes marked | nodes run in bf16/f16 | score deviation | map deviation | ms/image (batch 1) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["variants"]:
        kept = ", ".join(row["f32_scopes"]) or "(nothing: default precision)"
        lines.append(
            f"| {kept} | {row.get('marked_nodes', '')} | {row.get('reduced_precision_nodes', '')} "
            f"| {row.get('pred_score_deviation', float('nan')):.4f} "
            f"| {row.get('anomaly_map_deviation', float('nan')):.4f} | {row['latency_ms']:.2f} |"
        )
    if report["layers"]:
        lines += ["", "| operation | type | deviation | of its inputs |", "|---|---|---|---|"]
        lines += [
            f"| {row['node']} | {row['type']} | {row['deviation']:.4f} | {row['input_deviation']:.4f} |"
            for row in report["layers"]
        ]
    lines.append("")
    lines.append(
        "deviation: |default - f32| in units of the f32 output's std over the images and positions "
        "(variants: largest; operations: mean; integer outputs: share of elements that differ)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``anomalib-hyperbolic precision-report``: where an OpenVINO export loses accuracy at the default precision."""
    parser = argparse.ArgumentParser(prog="anomalib-hyperbolic precision-report", description=main.__doc__)
    parser.add_argument("xml", help="OpenVINO IR (.xml) exported by anomalib")
    parser.add_argument("images", nargs="+", help="image files (real images of the task)")
    parser.add_argument("--image-size", type=int, default=256, help="the export's input size")
    parser.add_argument("--scopes", nargs="*", help="scope groups to try in f32, each comma-separated")
    parser.add_argument("--layers", type=int, default=15, help="operations to list (0: none)")
    args = parser.parse_args(argv)
    scopes = [group.split(",") for group in args.scopes] if args.scopes else None
    report = precision_report(args.xml, load_images(args.images, args.image_size), scopes, args.layers)
    print(format_report(report))
    return 0
