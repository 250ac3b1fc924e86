"""Writing a traced graph as a self-describing ONNX file: legacy (TorchScript) exporter, the
metadata a runtime reads in ``metadata_props``, written under a temporary name and moved in
place only when complete."""

from __future__ import annotations

from pathlib import Path

import torch


def write_onnx(graph: torch.nn.Module, args: tuple, out_path: str | Path, input_names: list[str], output_names: list[str],
               dynamic_axes: dict, metadata: dict, opset: int = 18) -> None:
    import onnx

    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(graph, args, str(tmp), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
    proto = onnx.load(str(tmp))
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.save(proto, str(tmp))
    tmp.replace(out_path)
