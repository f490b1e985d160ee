"""Exported files run as the network: ``images -> (class outputs, box outputs)`` in onnxruntime or OpenVINO.

:class:`ExportedNetwork` gives an exported raw-output file (``efficientdet export`` without ``--with-nms``: ONNX,
int8 ONNX, or an OpenVINO IR ``.xml``) the interface of :class:`~efficientdet.nn.detector.EfficientDet` that
:class:`~efficientdet.inference.Detector` and :func:`~efficientdet.validate.evaluate_model` rely on: a ``config``
(with ``image_size`` set to the file's input size), ``class_names`` / ``category_ids`` from the file's metadata,
and ``forward`` returning one flat level per output (``[B, A*C, 1, 1]`` and ``[B, A*4, 1, 1]``). The flat layout is
anchor-major, exactly the per-level maps flattened in anchor order, so the usual post-processing reads it as is.
Pre- and post-processing therefore stay the project's own (torch); only the network runs in the runtime.

The runtime is chosen by ``backend``, by default from the suffix (``.onnx``: onnxruntime, ``.xml``: OpenVINO);
OpenVINO also reads ``.onnx`` files directly. Files with a fixed batch take any batch: it is run in chunks of the
file's batch, the last one padded.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.config import ModelConfig
from ..ops.postprocess import ClassOutputs
from ..utils.device import x86_cpu_without_vnni
from .exporter import METADATA_KEY, RAW_OUTPUTS
from .openvino_core import OPENVINO_HINT, openvino_core, require_openvino  # noqa: F401  (re-exported)

RUNTIME_BACKENDS = ("onnxruntime", "openvino")
OPENVINO_COMPUTE = {"fp32": "f32", "bf16": "bf16"}  # OpenVinoNetwork's compute -> INFERENCE_PRECISION_HINT
EXPORTED_SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino"}
# the output an OpenVINO graph gains at load time (add_anchor_maxima): each anchor's best class logit
ANCHOR_MAXIMA_OUTPUT = "anchor_maxima"
# sets of output arrays an OpenVINO network keeps for reuse (CompiledOpenVinoNetwork._unused_outputs): a caller
# holding one result while the next call runs needs two, a pipeline a few more
OUTPUT_SETS = 4
ONNXRUNTIME_HINT = 'pip install "efficientdet[export]"'


def is_exported_file(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` names an exported network (by suffix) rather than a checkpoint."""
    return path is not None and Path(str(path)).suffix.lower() in EXPORTED_SUFFIXES


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an ImportError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"onnxruntime is not installed: {ONNXRUNTIME_HINT}") from e
    return onnxruntime


def read_exported_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The description written by ``efficientdet export`` into an ONNX file (metadata_props) or an OpenVINO IR
    (``rt_info``): model config, input shape, mean/std, outputs, class names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".xml":
        model = openvino_core().read_model(str(path))
        if not model.has_rt_info(METADATA_KEY):
            raise ValueError(f"{path}: not written by efficientdet export (no {METADATA_KEY!r} rt_info)")
        return json.loads(model.get_rt_info(METADATA_KEY).astype(str))
    try:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except ImportError as e:
        raise ImportError(f"reading an ONNX file needs onnx: {ONNXRUNTIME_HINT}") from e
    except Exception as e:  # onnx raises DecodeError & co. for a file that is not ONNX
        raise ValueError(f"{path}: not an ONNX file ({e})") from e
    if METADATA_KEY not in props:
        raise ValueError(f"{path}: not written by efficientdet export (no {METADATA_KEY!r} metadata)")
    return json.loads(props[METADATA_KEY])


class ExportedNetwork(nn.Module):
    """Base of the runtime wrappers: metadata, batching to the file's batch, torch <-> numpy hand-over.

    Subclasses implement :meth:`run` (one numpy batch of the file's batch size in, the two raw outputs out, and
    the per-anchor maxima where the runtime computes them: :class:`~efficientdet.postprocess.ClassOutputs`).
    """

    backend = ""
    # torch threads for a Detector's pre- and post-processing around this network (Detector.host_threads). After
    # each parallel torch op, torch's OpenMP workers spin-wait for a few milliseconds on the cores that the
    # runtime's own threads want next; torch work on one thread leaves them free. Measured on a 2-core EPYC (D0,
    # 512 px, OpenVINO int8 on 2 threads, a 640x480 image): end to end 39.0 -> 37.3 ms, as with OMP_WAIT_POLICY
    # PASSIVE; the post-processing's share on one thread costs less than the spinning did.
    host_threads = 1
    # whether run() takes NHWC arrays (a channels-last batch hands them over without a copy): the predictors feed
    # such a network channels-last batches (efficientdet.models.fuse.uses_channels_last)
    channels_last_input = False

    def __init__(self, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
        super().__init__()
        if metadata.get("with_nms"):
            raise ValueError(
                f"{path}: this file has NMS inside (exported with --with-nms); predict, eval and bench run "
                "raw-output files (export without --with-nms) and do the post-processing themselves"
            )
        if list(metadata.get("outputs", [])) != list(RAW_OUTPUTS):
            raise ValueError(f"{path}: expected the outputs {', '.join(RAW_OUTPUTS)}, got {metadata.get('outputs')}")
        self.path = Path(path)
        self.metadata = metadata
        batch, _, height, width = metadata["input"]["shape"]
        self.fixed_batch = batch if isinstance(batch, int) else None
        self.input_size = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        config = ModelConfig.from_dict(metadata["config"])
        if self.input_size is not None and height == width:
            config = config.replace(image_size=height)  # Detector and evaluation size their inputs by this
        self.config = config
        self.class_names = metadata.get("class_names")
        self.category_ids = metadata.get("category_ids")
        self.precision = metadata.get("precision", "fp32")

    def run(self, images: np.ndarray) -> tuple[np.ndarray, ...]:  # pragma: no cover - abstract
        """The raw outputs (:data:`RAW_OUTPUTS`) of one batch of the file's batch size (NCHW, or NHWC where
        ``channels_last_input``), then, where the runtime computes them, the per-anchor maxima
        (:data:`ANCHOR_MAXIMA_OUTPUT`)."""
        raise NotImplementedError

    def input_size_problem(self, size: int | tuple[int, int] | None) -> str | None:
        """Why the file cannot take inputs of ``size`` (a side or (H, W); None: the file's own), or None: checked by
        the commands before their work, and by :meth:`forward` on every batch."""
        if size is None or self.input_size is None:
            return None
        got = (size, size) if isinstance(size, int) else tuple(size)
        if got == self.input_size:
            return None
        h, w = self.input_size
        return (f"{self.path} takes {h}x{w} inputs, got {got[0]}x{got[1]} (use the file's size: leave --img-size "
                "out, or export again at the size wanted)")  # fmt: skip

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        problem = self.input_size_problem(tuple(images.shape[-2:]))
        if problem:
            raise ValueError(problem)
        tensor = images.detach().cpu().float()
        if self.channels_last_input:  # NHWC: a view of a channels-last batch's memory
            tensor = tensor.permute(0, 2, 3, 1)
        array = tensor.contiguous().numpy()
        step = self.fixed_batch or len(array)
        runs = []  # per chunk: the run's arrays for the chunk's real images
        for start in range(0, len(array), step):
            chunk = array[start : start + step]
            n = len(chunk)
            if n < step:  # a fixed-batch file: pad the last chunk with zeros, drop what they give
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            runs.append([output[:n] for output in self.run(chunk)])
        b = len(array)
        # one run: the runtime's buffers, no copy
        outputs = [parts[0] if len(parts) == 1 else np.concatenate(parts) for parts in zip(*runs)]
        cls_out, box_out = (torch.from_numpy(a).view(b, -1, 1, 1).to(images.device) for a in outputs[:2])
        maxima = torch.from_numpy(outputs[2]).to(images.device) if len(outputs) > 2 else None  # OpenVinoNetwork
        return ClassOutputs([cls_out], maxima), [box_out]


class Int8SaturationWarning(UserWarning):
    """An int8 file with 8-bit weights runs on an x86 CPU without VNNI, where its arithmetic can saturate (7-bit
    weights cannot): onnxruntime's ``--int8-activations uint8-vnni`` and ``int8`` files, OpenVINO's int8 files
    without ``--seven-bit-weights``. Measured on an AVX2-only EPYC (a BCCD Lite0, its val split): 0.105-0.121 AP
    lost with 8-bit weights against 0.006 (onnxruntime) and 0.014 (OpenVINO) with 7-bit ones."""


def warn_if_saturating(path: str | os.PathLike, metadata: dict[str, Any], what: str, remedy: str) -> None:
    """Warn (:class:`Int8SaturationWarning`) that ``path``, ``what``, may not compute what it measured on this CPU,
    if its ``metadata`` says int8 with 8-bit weights and this is an x86 CPU without VNNI; ``remedy`` says which file
    cannot. 7-bit weights are recognised by the words either writer stores for them (an onnxruntime file never
    carries OpenVINO's, so one set serves both runtimes)."""
    if metadata.get("precision") != "int8":
        return
    from .openvino import OPENVINO_WEIGHTS_7_BIT  # the writers' words for 7-bit weights
    from .quantize import WEIGHTS_7_BIT

    if metadata.get("quantization", {}).get("weights") in (OPENVINO_WEIGHTS_7_BIT, WEIGHTS_7_BIT):
        return
    if x86_cpu_without_vnni():
        message = (f"{path}: {what} on a CPU without VNNI, where uint8 x int8 kernels can saturate (detections may "
                   f"differ from the file's measured ones); {remedy}")  # fmt: skip
        warnings.warn(message, Int8SaturationWarning, stacklevel=3)


class OnnxRuntimeNetwork(ExportedNetwork):
    """An exported ONNX file in an onnxruntime CPU session (int8 QDQ files run the integer kernels)."""

    backend = "onnxruntime"

    def __init__(
        self, path: str | os.PathLike, metadata: dict[str, Any], threads: int | None = None, compute: str = "fp32"
    ) -> None:
        if compute != "fp32":
            raise ValueError(f"--dtype {compute}: onnxruntime runs an exported file as written (fp32 / int8)")
        super().__init__(path, metadata)
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle onnxruntime workers spin-wait by default, stealing the cores that pre- and post-processing (torch)
        # need right after each run: end to end that costs more than the spinning saves.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        # uint8 and int8 activations alike: onnxruntime runs S8S8 through its u8 x s8 kernels on such CPUs
        warn_if_saturating(path, metadata, "int8 file with 8-bit weights",
                           "the default --int8-activations uint8 (7-bit weights) cannot")  # fmt: skip

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, codes = self.session.run(None, {self.input_name: images})
        return logits, codes


class CompiledOpenVinoNetwork(ExportedNetwork):
    """An OpenVINO model already compiled (``ov.CompiledModel``) as a network module.

    NNCF's accuracy control hands each int8 candidate over compiled, in memory; ``metadata`` is the description
    the file will carry (:func:`read_exported_metadata`), ``name`` what messages call the model. A model with the
    :data:`ANCHOR_MAXIMA_OUTPUT` (:func:`add_anchor_maxima`) returns it too.
    """

    backend = "openvino"

    def __init__(self, compiled: Any, metadata: dict[str, Any], name: str | os.PathLike = "OpenVINO model") -> None:
        super().__init__(name, metadata)
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        names = {name for port in compiled.outputs for name in port.get_names()}
        wanted = RAW_OUTPUTS + ((ANCHOR_MAXIMA_OUTPUT,) if ANCHOR_MAXIMA_OUTPUT in names else ())
        self.outputs = [compiled.output(output) for output in wanted]
        ov = require_openvino()
        self._tensor = ov.Tensor
        shapes = [port.get_partial_shape() for port in self.outputs]
        fixed = not any(shape.is_dynamic for shape in shapes)
        self._output_shapes = [tuple(shape.to_shape()) for shape in shapes] if fixed else None
        self._output_types = [port.get_element_type().to_dtype() for port in self.outputs]
        self._output_sets: list[tuple[list[np.ndarray], list[int]]] = []  # (arrays, their idle counts)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        if self._output_shapes is None:  # a free batch or size: outputs sized by the runtime, copied out
            self._infer(images)
            return tuple(self.request.get_tensor(port).data.copy() for port in self.outputs)
        # The request reuses its own output buffers at the next call, so their contents would have to be copied
        # out (D0: 18 MB of logits a call). Instead it writes into arrays of ours, set before every inference
        # (it keeps only a pointer to them), that no earlier result still uses. The input is read in place.
        arrays = self._unused_outputs()
        for port, array in zip(self.outputs, arrays):
            self.request.set_tensor(port, self._tensor(array, shared_memory=True))
        self._infer(images)
        return arrays

    def _infer(self, images: np.ndarray) -> None:
        """One inference of ``images`` (read in place), run by the compiled model's own threads.

        ``start_async`` + ``wait`` rather than ``infer``: a synchronous ``infer`` runs the graph on the calling
        thread (OpenVINO's CPU plugin, as its developers describe it), the asynchronous call on the stream's own
        worker threads while the caller sleeps. Measured on a 2-core Xeon with AMX (int8, 2 threads, interleaved in
        one process; benchmarks/openvino_request.py): Lite0 at 320 px 6.40 -> 5.55 ms a call, D0 at 512 px 34.6 ->
        31.5 ms, the same outputs.
        """
        self.request.start_async({0: images}, share_inputs=True)
        self.request.wait()

    def _unused_outputs(self) -> tuple[np.ndarray, ...]:
        """Output arrays for the next inference: a set handed out before that nothing refers to any more, else new
        ones (up to OUTPUT_SETS of them kept for reuse).

        Binding new arrays every call cost more than the copy they avoid (a 2-core Xeon, OpenVINO int8: D0 at 512
        px 37.6-39.8 against 33.0-35.2 ms a call, Lite0 at 320 10.1-11.8 against 7.5-8.7): the plugin's first
        writes into new memory are slow. A set is reused only when its arrays' reference counts are back to those
        it had when only this object held it, so a result (or any view or tensor made from it) that a caller still
        holds is never written into.
        """
        for arrays, idle in self._output_sets:
            if _reference_counts(arrays) == idle:
                return tuple(arrays)  # a tuple of the caller's own: holding it holds the arrays
        arrays = [np.empty(shape, dtype) for shape, dtype in zip(self._output_shapes, self._output_types)]
        if len(self._output_sets) < OUTPUT_SETS:
            self._output_sets.append((arrays, _reference_counts(arrays)))
        return tuple(arrays)


def _reference_counts(arrays: list[np.ndarray]) -> list[int]:
    """Each array's reference count, taken the same way for a set's idle counts and for every later check."""
    return [sys.getrefcount(array) for array in arrays]


class OpenVinoNetwork(CompiledOpenVinoNetwork):
    """An OpenVINO IR (or ONNX file) compiled for the CPU plugin with the latency hint (one request at a time).

    ``compute``: the precision of the layers the file keeps in floating point (every layer of an fp32 file, the
    unquantised ones of an int8 file). OpenVINO's CPU plugin computes them in bf16 by default on CPUs with bf16
    units (AVX512-BF16, AMX), which moves boxes and scores beyond float rounding: the default here is ``"fp32"``,
    so a file computes what eager PyTorch and onnxruntime compute on every CPU; ``"bf16"`` is OpenVINO's faster
    choice on such CPUs (opt-in, like eager's bf16 autocast).

    ``anchor_maxima``: the graph also gives each anchor's best class logit (:func:`add_anchor_maxima`), which the
    post-processing would otherwise reduce on the host (:func:`efficientdet.postprocess.select_candidates`).
    ``channels_last_input``: the compiled model reads NHWC images (OpenVINO's pre-processing turns them into the
    file's NCHW inside the graph), so that the channels-last batches of the project's pre-processing
    (:func:`~efficientdet.data.transforms.normalise_padded`) reach it without a layout copy on the host.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        metadata: dict[str, Any],
        threads: int | None = None,
        compute: str = "fp32",
        anchor_maxima: bool = True,
        channels_last_input: bool = True,
    ) -> None:
        model = openvino_core().read_model(str(path))
        if anchor_maxima:
            add_anchor_maxima(model)
        if channels_last_input:
            model = take_nhwc_input(model)
        super().__init__(compile_for_cpu(model, threads, compute), metadata, path)
        self.channels_last_input = channels_last_input
        # an IR, or an int8 ONNX file (OpenVINO runs both)
        warn_if_saturating(path, metadata, "OpenVINO int8 file with 8-bit weights",
                           "a file exported with --seven-bit-weights cannot")  # fmt: skip


def take_nhwc_input(model: Any) -> Any:
    """``model`` (an ``ov.Model`` with one NCHW image input) reading NHWC images instead: OpenVINO's
    pre-processing puts the transpose inside the graph, where the CPU plugin converts the input to its own
    blocked layout anyway."""
    ov = require_openvino()
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(model)
    steps.input().tensor().set_layout(ov.Layout("NHWC"))
    steps.input().model().set_layout(ov.Layout("NCHW"))
    return steps.build()


def add_anchor_maxima(model: Any) -> None:
    """Give ``model`` (an ``ov.Model`` with the raw outputs) one more output, :data:`ANCHOR_MAXIMA_OUTPUT`: each
    anchor's largest class logit, ``[B, anchors]``.

    Post-processing starts by ranking the anchors by their best class
    (:func:`~efficientdet.postprocess.select_candidates`). On the host that reduction reads every logit along rows
    of C values: for D0 at 512 px, 49,104 anchors x 90 classes, 2.4 ms on one torch thread, half of the top-k's
    time. In the graph OpenVINO computes it on its own threads: measured on a 2-core EPYC (D0 int8), the network's
    call grew by 0.8 ms and the host's top-k shrank from 4.5 to 1.8 ms. The top-k itself stays on the host: in an
    int8 file's coarse logits hundreds of anchors can tie at the k-th best maximum, and a top-k inside the graph
    (tried: slower too, +2.7 ms) would cut the ties differently from the post-processing.
    """
    try:
        from openvino import opset13 as ops
    except ImportError:  # OpenVINO 2024.0-2024.x
        from openvino.runtime import opset13 as ops

    if RAW_OUTPUTS[0] not in {name for port in model.outputs for name in port.get_names()}:
        return  # not a raw-output file: ExportedNetwork says what it is
    logits = model.output(RAW_OUTPUTS[0]).get_node().input_value(0)  # what the Result node reads: [B, A, C]
    maxima = ops.reduce_max(logits, ops.constant(np.array([-1], np.int64)), False)
    maxima.output(0).set_names({ANCHOR_MAXIMA_OUTPUT})
    model.add_outputs([maxima.output(0)])


def compile_for_cpu(model: Any, threads: int | None = None, compute: str = "fp32") -> Any:
    """``model`` (an ``ov.Model`` or a file) compiled for OpenVINO's CPU plugin with the latency hint, its float
    layers computed in ``compute`` (see :class:`OpenVinoNetwork`); every OpenVINO model this project runs goes
    through here, so that what the export measures is what predict, eval and bench run."""
    if compute not in OPENVINO_COMPUTE:
        raise ValueError(f"OpenVINO compute precision {compute!r}: choose from {', '.join(OPENVINO_COMPUTE)}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OPENVINO_COMPUTE[compute]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    # the process's one Core: plugins of Cores freed out of order break signal handling (openvino_core)
    return openvino_core().compile_model(model, "CPU", config)


_WRAPPERS: dict[str, Callable[..., ExportedNetwork]] = {
    "onnxruntime": OnnxRuntimeNetwork,
    "openvino": OpenVinoNetwork,
}


def resolve_backend(path: str | os.PathLike, backend: str | None) -> str:
    """``backend``, or the one the suffix implies; an error for a pair that cannot run."""
    suffix = Path(str(path)).suffix.lower()
    if suffix not in EXPORTED_SUFFIXES:
        raise ValueError(f"{path}: not an exported network (expected one of {', '.join(EXPORTED_SUFFIXES)})")
    if backend is None:
        return EXPORTED_SUFFIXES[suffix]
    if backend not in RUNTIME_BACKENDS:
        raise ValueError(f"--backend {backend}: exported files run on {' or '.join(RUNTIME_BACKENDS)}")
    if suffix == ".xml" and backend != "openvino":
        raise ValueError(f"{path}: an OpenVINO IR runs on --backend openvino only")
    return backend


def load_exported(
    path: str | os.PathLike, backend: str | None = None, threads: int | None = None, compute: str = "fp32"
) -> ExportedNetwork:
    """An exported raw-output file as a network module (see the module docstring); ``backend`` default by suffix.
    ``compute="bf16"``: OpenVINO computes the file's floating-point layers in bf16 (:class:`OpenVinoNetwork`).

    >>> det = Detector(load_exported("lite0_int8.onnx"))   # the usual pre- and post-processing around it
    """
    backend = resolve_backend(path, backend)
    metadata = read_exported_metadata(path)
    return _WRAPPERS[backend](path, metadata, threads, compute)


def input_size_problem(model: torch.nn.Module, size: int | tuple[int, int] | None) -> str | None:
    """Why ``model`` cannot take inputs of ``size``: an exported file fixed at another size (a torch model takes
    any size), as one line; else None."""
    return model.input_size_problem(size) if isinstance(model, ExportedNetwork) else None
