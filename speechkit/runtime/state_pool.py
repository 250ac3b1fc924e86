"""Streaming encoder caches kept on the recognizer's device between chunks (ONNX Runtime I/O binding).

The numpy path of a recognizer's ``decode_streams`` concatenates every ready stream's caches into
the batch and slices the new ones back out, so on a CUDA session each chunk copies all the caches
host → device → host. Here each cache lives in a *pool* tensor of C slots on the device, its batch
axis moved first (a slot is one contiguous block); a stream owns one slot from its first chunk
until it is done or released. The model graph is wrapped once at load time (kept in memory) and
only the wrapped one opens on the device, so the weights sit on the GPU once (and TensorRT builds
one engine); the recognizer's session of the plain graph stays on the CPU:

    cached_k   = Where(Reshape(fresh), 0, Transpose(Gather(pool_k, slots, axis=0)))   # fresh: the zero initial state
    ...the model, unchanged (its other inputs → its other outputs)...
    new_pool_k = ScatterND(pool_k, Reshape(slots, [-1, 1]), Transpose(new_cached_k))

(the Transposes only for the states whose batch axis is not the first: cached_att, cached_conv of
the CTC model's layout; the zipformer2 layout's transducer encoder has several).

Only the model's other inputs (x, x_lens, att_context; or x alone), slots and fresh go in from the
host and its other outputs (log-probabilities, encoder frames) come back; the new pools are
outputs ORT allocates on the device, bound as the next call's inputs (so a run never reads and
writes one buffer). Every added op copies values, none computes, so a stream's tokens are the
numpy path's bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from speechkit.devices import parse_device
from speechkit.errors import SpeechkitError
from speechkit.runtime.session import make_session

INITIAL_CAPACITY = 8
MIN_OPSET = 13  # Gather, Where, Transpose, Reshape and ScatterND (no reduction) in their opset-13 forms
_WRAPPED: dict[tuple, bytes] = {}  # (path, size, mtime, states) → the wrapped model's bytes


def pool_name(name: str) -> str:
    return f"pool_{name}"


def new_pool_name(name: str) -> str:
    return f"new_pool_{name}"


def wrap_model(path: str | Path, state_names: list[str], batch_axes: list[int]) -> bytes:
    """The model at ``path`` with its state inputs read from pools (inputs ``pool_<name>``, plus
    ``slots`` int64 [B] and ``fresh`` bool [B]) and its state outputs ``new_<name>`` replaced by
    the updated pools ``new_pool_<name>``; cached in memory per file version."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, tuple(state_names), tuple(batch_axes))
    if key not in _WRAPPED:
        _WRAPPED[key] = _build(onnx.load(str(path)), state_names, batch_axes).SerializeToString()
    return _WRAPPED[key]


def _build(model: onnx.ModelProto, state_names: list[str], batch_axes: list[int]) -> onnx.ModelProto:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise SpeechkitError(f"device states need a model of opset >= {MIN_OPSET}, this one has {opset} (re-export it)")
    g = model.graph
    inputs = {i.name: i for i in g.input}
    outputs = {o.name: o for o in g.output}
    pre, post, new_inputs, new_outputs = [], [], [], []
    new_inputs.append(helper.make_tensor_value_info("slots", TensorProto.INT64, ["B"]))
    new_inputs.append(helper.make_tensor_value_info("fresh", TensorProto.BOOL, ["B"]))
    for name, axis in zip(state_names, batch_axes):
        vi = inputs[name]
        rank = len(vi.type.tensor_type.shape.dim)
        elem = vi.type.tensor_type.elem_type
        dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        dims = ["C"] + dims[:axis] + dims[axis + 1 :]  # the pool: batch axis first, a slot one contiguous block
        perm = list(range(1, axis + 1)) + [0] + list(range(axis + 1, rank))  # pool layout → the model's
        back = [axis] + [a for a in range(rank) if a != axis]  # the model's layout → pool layout
        pool, out = pool_name(name), f"new_{name}"
        if out not in outputs:
            raise SpeechkitError(f"the model has no output {out} for its state input {name}: not a streaming export")
        new_inputs.append(helper.make_tensor_value_info(pool, elem, dims))
        # [B] → a shape that broadcasts along the batch axis: -1 there, 1 elsewhere
        bshape = [1] * rank
        bshape[axis] = -1
        shape_c = f"sp_{name}_bshape"
        zero_c = f"sp_{name}_zero"
        gathered = f"sp_{name}_gathered"
        pre += [
            helper.make_node("Constant", [], [shape_c], value=helper.make_tensor(shape_c, TensorProto.INT64, [rank], bshape)),
            helper.make_node("Constant", [], [zero_c], value=helper.make_tensor(zero_c, elem, [], [0])),
            helper.make_node("Gather", [pool, "slots"], [gathered], axis=0),
        ]
        if axis:
            pre.append(helper.make_node("Transpose", [gathered], [f"sp_{name}_moved"], perm=perm))
            gathered = f"sp_{name}_moved"
        pre += [
            helper.make_node("Reshape", ["fresh", shape_c], [f"sp_{name}_fresh"]),
            helper.make_node("Where", [f"sp_{name}_fresh", zero_c, gathered], [name]),
        ]
        update = out
        if axis:
            post.append(helper.make_node("Transpose", [out], [f"sp_{name}_first"], perm=back))
            update = f"sp_{name}_first"
        post.append(helper.make_node("ScatterND", [pool, "sp_slot_index", update], [new_pool_name(name)]))
        new_outputs.append(helper.make_tensor_value_info(new_pool_name(name), elem, dims))
    # the states keep the model's declared types and shapes (batch dim B) for ORT's shape inference
    g.value_info.extend(inputs[name] for name in state_names)
    pre.insert(0, helper.make_node("Constant", [], ["sp_index_shape"],
                                   value=helper.make_tensor("sp_index_shape", TensorProto.INT64, [2], [-1, 1])))
    post.insert(0, helper.make_node("Reshape", ["slots", "sp_index_shape"], ["sp_slot_index"]))  # [B, 1]: whole slots
    kept_in = [i for i in g.input if i.name not in state_names]
    kept_out = [o for o in g.output if o.name not in {f"new_{n}" for n in state_names}]
    nodes = pre + list(g.node) + post
    del g.input[:]
    g.input.extend(kept_in + new_inputs)
    del g.output[:]
    g.output.extend(kept_out + new_outputs)
    del g.node[:]
    g.node.extend(nodes)
    return model


def pool_device(device: str) -> tuple[str, int]:
    """(device type, device id) of the memory the pools live in for ``device``: GPU N's on an
    onnxruntime-gpu build (TensorRT's engines work in the same CUDA memory), else the host's."""
    kind, index = parse_device(device)
    return ("cuda", index) if kind != "cpu" and ort.get_device() == "GPU" else ("cpu", 0)


class StatePool:
    """The pools of one recognizer's encoder: slots, the wrapped session, one call per batch."""

    def __init__(self, model_path: str | Path, device: str, state_names: list[str], batch_axes: list[int],
                 zero_state: list[np.ndarray], num_threads: int = 1, memory_arena: bool = True,
                 capacity: int = INITIAL_CAPACITY):
        """``zero_state``: one new stream's caches (batch 1 on each batch axis), the model's initial
        state; the wrapped graph opens on ``device`` as :func:`make_session` opens any model."""
        self.state_names, self.batch_axes = list(state_names), list(batch_axes)
        self.device_type, self.device_id = pool_device(device)
        self.session = make_session(wrap_model(model_path, state_names, batch_axes), num_threads, memory_arena, device,
                                    name=f"{model_path} (its device-state graph)")
        state_outputs = {new_pool_name(n) for n in state_names}
        # the model's own outputs, in its order (the wrapped graph lists the new pools after them)
        self.outputs = [o.name for o in self.session.get_outputs() if o.name not in state_outputs]
        self._slot_zero = [np.moveaxis(z, a, 0)[0] for z, a in zip(zero_state, batch_axes)]  # one slot, batch axis dropped
        self.capacity = 0
        self.pools: list[ort.OrtValue] = []
        self.free: list[int] = []
        self.grows = 0  # times the pools were re-created larger
        self._resize(capacity)

    def _resize(self, capacity: int) -> None:
        """(Re)create the pools with ``capacity`` slots, the old slots' contents kept (one round
        trip through the host: growth is rare, by doubling)."""
        pools = []
        for k, z in enumerate(self._slot_zero):
            arr = np.zeros((capacity, *z.shape), dtype=z.dtype)
            if self.capacity:
                arr[: self.capacity] = self.pools[k].numpy()
            pools.append(ort.OrtValue.ortvalue_from_numpy(arr, self.device_type, self.device_id))
        self.free = sorted(set(self.free) | set(range(self.capacity, capacity)), reverse=True)  # pop() gives the lowest
        self.pools, self.capacity = pools, capacity

    def acquire(self) -> int:
        if not self.free:
            self.grows += 1
            self._resize(self.capacity * 2)
        return self.free.pop()

    def release(self, slot: int) -> None:
        self.free.append(slot)

    @property
    def in_use(self) -> int:
        return self.capacity - len(self.free)

    def run_inputs(self, inputs: dict[str, np.ndarray], slots: np.ndarray, fresh: np.ndarray) -> list[np.ndarray]:
        """One encoder call for the streams in ``slots`` (in batch order; ``fresh``: those whose
        slot is read as the zero initial state), ``inputs`` the model's other inputs → its other
        outputs (``outputs``) on the host; the pools are replaced by the call's updated ones, which
        stay on the device."""
        io = self.session.io_binding()
        for name, value in inputs.items():
            io.bind_cpu_input(name, value)
        io.bind_cpu_input("slots", slots)
        io.bind_cpu_input("fresh", fresh)
        for name, pool in zip(self.state_names, self.pools):
            io.bind_ortvalue_input(pool_name(name), pool)
        for name in self.outputs:
            io.bind_output(name, "cpu")
        for name in self.state_names:
            io.bind_output(new_pool_name(name), self.device_type, self.device_id)  # a new buffer: never the one read
        self.session.run_with_iobinding(io)
        out = io.get_outputs()
        self.pools = list(out[len(self.outputs) :])
        return [v.numpy() for v in out[: len(self.outputs)]]

    def run_streams(self, streams: list, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """:meth:`run_inputs` for ``streams`` (each with a ``slot``: None before its first chunk,
        -1 once released, and its numpy-path ``state``): a stream's first chunk takes a slot, read
        as the zero initial state this once, and its ``state`` list is emptied (the caches now
        live in the pool). A failed call gives the new streams' slots back, so they start afresh."""
        if any(s.slot is not None and s.slot < 0 for s in streams):
            raise SpeechkitError("a released stream cannot be decoded again")
        fresh = np.array([s.slot is None for s in streams])
        for s, f in zip(streams, fresh):
            if f:
                s.slot, s.state = self.acquire(), []
        try:
            return self.run_inputs(inputs, np.array([s.slot for s in streams], dtype=np.int64), fresh)
        except BaseException:
            for s, f in zip(streams, fresh):
                if f:
                    self.release(s.slot)
                    s.slot = None
            raise
