"""A judged case of a table function saved and explained: `check --save-case` writes the
inputs, the student's outputs and the correct ones (one .npz, no pickles); `explain --load`
rebuilds the case and prints the function's staged graph stage by stage (value and gradient)
with the student's outputs beside the correct ones."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from .table import TABLE, Case, entry

__all__ = ["case_arrays", "case_from_arrays", "is_layer_case", "load_layer_case",
           "explain_layer_case"]

MAX_CASE_BYTES = 256 * 2**20


def case_arrays(name: str, case: Case, outputs: tuple[np.ndarray, ...] | None,
                expected: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """The arrays saved for one case of table function `name`."""
    e = entry(name)
    arrays: dict[str, np.ndarray] = {"layer": np.array(name)}
    for argname, value in zip(e.signature if e.direction != "backward" else
                              entry(e.forward).signature, case.args):
        if isinstance(value, np.ndarray):
            arrays[f"input_{argname}"] = value
        elif isinstance(value, dict):
            for key, number in value.items():
                if isinstance(number, (int, float)) and not isinstance(number, bool):
                    arrays[f"param_{argname}_{key}"] = np.array(number)
    for key, value in case.facts.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            arrays[f"fact_{key}"] = np.array(value)
        elif isinstance(value, tuple) and all(isinstance(v, int) for v in value):
            arrays[f"fact_{key}"] = np.array(value, dtype=np.int64)
    if case.dout is not None:
        arrays["dout"] = case.dout
    names = e.returns[:1] if e.direction == "forward" else e.returns
    for out_name, value in zip(names, outputs or ()):
        if np.asarray(value).dtype.kind in "biuf":
            arrays[f"student_{out_name}"] = np.asarray(value)
    for out_name, value in zip(names, expected):
        arrays[f"correct_{out_name}"] = np.asarray(value)
    return arrays


def is_layer_case(path: str | os.PathLike) -> bool:
    """Whether the .npz at `path` is a saved case of a table function."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "layer.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_layer_case(path: str | os.PathLike) -> tuple[str, Case, dict[str, np.ndarray]]:
    """(function name, the Case, the student's and correct outputs by name); ValueError
    says what is wrong with the file (no pickles are ever loaded)."""
    with zipfile.ZipFile(path) as archive:
        size = sum(info.file_size for info in archive.infolist())
    if size > MAX_CASE_BYTES:
        raise ValueError(f"load: {path} holds {size / 2**20:.0f} MiB; a saved case is at most "
                         f"{MAX_CASE_BYTES // 2**20} MiB")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return case_from_arrays(arrays, str(path))


def case_from_arrays(arrays: dict[str, np.ndarray], where: str = "the case"
                     ) -> tuple[str, Case, dict[str, np.ndarray]]:
    """The inverse of `case_arrays` (see `load_layer_case`)."""
    arrays = dict(arrays)
    name = str(arrays.pop("layer", ""))
    if name not in TABLE:
        raise ValueError(f"load: {where} names no function of the assignment ({name!r})")
    for key, value in arrays.items():
        if value.dtype.kind not in "biuf" and key != "function":
            raise ValueError(f"load: {where}: {key} holds {value.dtype} values, expected numbers")
    e = entry(name)
    signature = entry(e.forward).signature if e.direction == "backward" else e.signature
    args: list[Any] = []
    for argname in signature:
        if f"input_{argname}" in arrays:
            args.append(arrays[f"input_{argname}"])
        else:
            prefix = f"param_{argname}_"
            args.append({k[len(prefix):]: v.item() for k, v in arrays.items()
                         if k.startswith(prefix)})
    facts = {k[5:]: (tuple(int(i) for i in v) if v.ndim else v.item())
             for k, v in arrays.items() if k.startswith("fact_")}
    case = Case("the saved case", tuple(args), arrays.get("dout"), facts)
    outputs = {k: v for k, v in arrays.items() if k.startswith(("student_", "correct_"))}
    return name, case, outputs


def explain_layer_case(path: str | os.PathLike) -> str:
    """The saved case's staged graph, each named stage's value and gradient, then the
    student's outputs beside the correct ones."""
    from ..core.node import graph_nodes
    name, case, outputs = load_layer_case(path)
    e = entry(name)
    lines = [f"{name} on the saved case: the staged graph, stage by stage"]
    if e.staged is None:
        lines.append("(no staged graph for this function)")
    else:
        root, upstream = e.staged(case)
        root.backward(upstream)
        with np.printoptions(precision=6, linewidth=100, threshold=200):
            for node in graph_nodes(root):
                if node.name is None:
                    continue
                lines.append(f"{node.name} {tuple(node.shape)} = {np.asarray(node.data)}")
                if node.grad is not None:
                    lines.append(f"  d{node.name} = {np.asarray(node.grad)}")
    with np.printoptions(precision=6, linewidth=100, threshold=200):
        for key in sorted(k for k in outputs if k.startswith("correct_")):
            out = key[len("correct_"):]
            lines.append(f"correct {out} = {outputs[key]}")
            if f"student_{out}" in outputs:
                lines.append(f"yours   {out} = {outputs[f'student_{out}']}")
    return "\n".join(lines)
