"""The authors' checkpoint layout (``brainsemantoks_ckpt_epoch_100.pth``) mapped onto ours.

timm-style: :func:`checkpoint_filter_fn` renames the teacher encoder's state-dict entries
to our module names and drops what the forward never uses (the ``tian3`` and
``buckner7`` tokenizer copies, ``inter_network_transformer.norm``); the architecture is
inferred from tensor shapes (and the heads from the saved config). Files are always
read with ``torch.load(..., weights_only=True, map_location="cpu")``, so a pickle that
would run code is refused, not executed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from bids_semantoks.atlas import DEFAULT_NETWORK_ORDER
from bids_semantoks.errors import DataError, MissingInputError
from bids_semantoks.model.config import EncoderConfig
from bids_semantoks.model.encoder import Encoder
from bids_semantoks.model.heads import ProjectionHead

__all__ = [
    "ModelNotAvailable",
    "checkpoint_filter_fn",
    "config_from_state",
    "load_authors_encoder",
    "load_projection_head",
    "load_state_checked",
    "read_torch_file",
]

_TOK = r"network_tokenizers\.schaefer400\.(\d+)\."
_TF = r"inter_network_transformer\."
_BLK = _TF + r"transformer_blocks\.(\d+)\."
#: (authors' key pattern after the encoder prefix, our key template)
_RENAMES: list[tuple[str, str]] = [
    (_TOK + r"branches\.0\.(weight|bias)", r"tokenizer.nets.\1.dense.\2"),
    (_TOK + r"branches\.1\.slconv\.D", r"tokenizer.nets.\1.long.skip"),
    (_TOK + r"branches\.1\.slconv\.kernel_list\.(\d+)", r"tokenizer.nets.\1.long.pieces.\2"),
    (_TOK + r"branches\.1\.slconv\.(multiplier|kernel_norm|kernel_norm_initialized)", r"tokenizer.nets.\1.long.\2"),
    (_TOK + r"branches\.1\.projection\.(weight|bias)", r"tokenizer.nets.\1.proj.\2"),
    (_TOK + r"norm\.(weight|bias)", r"tokenizer.nets.\1.norm.\2"),
    (_TF + r"mask_embedding", "mask_token"),
    (_TF + r"cls_token", "cls_token"),
    (_TF + r"temporal_pos_embedding", "time_embed"),
    (_TF + r"network_learnable_pos_embedding\.weight", "network_embed"),
    (_BLK + r"(norm1|norm2|ls1|ls2|attn\.qkv|attn\.proj)\.(weight|bias|gamma)", r"blocks.\1.\2.\3"),
    (_BLK + r"mlp\.0\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (_BLK + r"mlp\.3\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"norm\.(weight|bias)", r"norm.\1"),
]
#: Entries present in every authors' checkpoint that the forward never uses.
_IGNORED = [r"network_tokenizers\.(tian3|buckner7)\..*", _TF + r"norm\.(weight|bias)"]


class ModelNotAvailable(MissingInputError):
    """The model (file, download or network map) is not available."""


def _one_line(exc: BaseException) -> str:
    if hasattr(exc, "errors") and callable(exc.errors):  # pydantic: the first error, where it is and what
        err = exc.errors()[0]
        return f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}".removeprefix(": ")
    text = " ".join(str(exc).split())
    first = text.split(". ")[0]  # torch appends paragraphs of advice after the first sentence
    return (first if len(first) >= 20 else text)[:200]


def read_torch_file(path: str | Path) -> Any:
    """Read a ``.pth`` file safely (``weights_only=True``, on CPU).

    Parameters
    ----------
    path : str or Path
        Checkpoint file.

    Returns
    -------
    object
        What the file holds (tensors, dicts, lists, numbers, strings).

    Raises
    ------
    ModelNotAvailable
        The file does not exist.
    DataError
        The file holds pickled objects that could run code, or is truncated/not a
        PyTorch file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailable(f"{path}: model checkpoint not found; check the path or download it again")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise DataError(
                f"{path}: refused: the file holds pickled Python objects that could run code, "
                "not only tensors; use a checkpoint saved as a plain state dict"
            ) from None
        raise DataError(
            f"{path}: cannot read the checkpoint, it is truncated or not a PyTorch file "
            f"({_one_line(exc)}); download or copy it again"
        ) from None


def _model_state(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    state = obj.get("model_state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, Mapping) or not any(str(k).startswith("teacher_encoder.") for k in state):
        raise DataError(
            f"{path}: not a Brain-Semantoks checkpoint (no 'model_state_dict' with 'teacher_encoder.*' "
            "entries); pass the authors' .pth or a folder with model.safetensors + config.json"
        )
    return state


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], prefix: str = "teacher_encoder.") -> dict:
    """Map the authors' state dict onto our :class:`Encoder` names.

    Parameters
    ----------
    state_dict : mapping
        The authors' ``model_state_dict`` (student, teacher and heads).
    prefix : str
        Which encoder to take: ``"teacher_encoder."`` (default) or ``"student_encoder."``.

    Returns
    -------
    dict
        Our key -> tensor. Unused entries are dropped silently.

    Raises
    ------
    DataError
        An entry under ``prefix`` that this architecture does not know.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if any(re.fullmatch(p, rest) for p in _IGNORED):
            continue
        for pattern, template in _RENAMES:
            if re.fullmatch(pattern, rest):
                out[re.sub(pattern, template, rest)] = value
                break
        else:
            raise DataError(f"checkpoint entry {key!r} is not part of the Brain-Semantoks encoder; wrong model file")
    return out


def config_from_state(
    state: Mapping[str, torch.Tensor],
    network_map: np.ndarray,
    saved_config: Mapping | None = None,
    network_names: list[str] | None = None,
) -> EncoderConfig:
    """Architecture of a filtered state dict, with dimensions read from tensor shapes.

    The head count cannot be read from shapes: it is the saved ``model.heads`` or,
    when that is 0 (as released), D/64 as the authors derive it.
    """
    try:
        d = state["cls_token"].shape[-1]
        n_net = state["network_embed"].shape[0]
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * d
        n_pieces = len([k for k in state if re.fullmatch(r"tokenizer\.nets\.0\.long\.pieces\.\d+", k)])
        piece_len = state["tokenizer.nets.0.long.pieces.0"].shape[-1]
        dense_kernel = state["tokenizer.nets.0.dense.weight"].shape[-1]
        decay = float(state["tokenizer.nets.0.long.multiplier"].flatten()[0])
        n_patches = state["time_embed"].shape[0]
        sizes = [state[f"tokenizer.nets.{n}.dense.weight"].shape[1] for n in range(n_net)]
    except KeyError as exc:
        raise DataError(f"checkpoint lacks the encoder entry {exc}; wrong or incomplete model file") from None
    model_cfg = dict((saved_config or {}).get("model", {}) or {})
    heads = int(model_cfg.get("heads") or 0) or max(1, d // 64)
    patch_len = int(((saved_config or {}).get("data", {}) or {}).get("patch_size") or 20)
    network_map = np.asarray(network_map)
    counts = np.bincount(network_map.astype(np.int64), minlength=n_net).tolist() if network_map.size else []
    if network_map.ndim != 1 or counts != sizes:
        raise DataError(
            f"the network map (counts {counts}) does not fit the checkpoint, whose {n_net} network tokenizers "
            f"take {sizes} channels; use the atlas the model was trained with"
        )
    if network_names is None:
        network_names = list(DEFAULT_NETWORK_ORDER) if n_net == len(DEFAULT_NETWORK_ORDER) else [f"net{i}" for i in range(n_net)]
    try:
        return EncoderConfig(
            network_names=list(network_names),
            channel_networks=[int(c) for c in network_map],
            dim=d,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_hidden / d,
            patch_len=patch_len,
            n_patches=n_patches,
            dense_kernel=dense_kernel,
            sl_piece_len=piece_len,
            sl_n_pieces=n_pieces,
            sl_decay=decay,
            name=str((saved_config or {}).get("run_name") or "official"),
        )
    except ValueError as exc:  # pydantic's ValidationError: an architecture this app cannot run
        raise DataError(f"the checkpoint's architecture is not usable ({_one_line(exc)}); wrong model file") from None


def load_state_checked(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Strict ``load_state_dict`` with one-line :class:`DataError` on missing, extra or misshaped entries."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise DataError(
            f"{path}: model entries do not match the architecture (missing {missing[:3]}, unexpected {extra[:3]}); "
            "the file belongs to another model"
        )
    for key, ref in own.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise DataError(
                f"{path}: entry {key!r} has shape {tuple(state[key].shape)}, the architecture needs {tuple(ref.shape)}; "
                "the file is inconsistent with its config"
            )
        if not torch.isfinite(state[key].float()).all():
            raise DataError(f"{path}: entry {key!r} holds NaN or infinite values; the file is corrupt")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def _check_sl_sizes(config: EncoderConfig, state: Mapping[str, torch.Tensor], path: Path) -> None:
    for n, r in enumerate(config.network_sizes):
        h = state[f"tokenizer.nets.{n}.long.skip"].shape[0]
        if h != math.ceil(config.branch_dim / r):
            raise DataError(f"{path}: network {n} has {h} long-conv kernels per region, expected ceil({config.branch_dim}/{r})")


def load_authors_encoder(
    path: str | Path,
    network_map: np.ndarray,
    *,
    network_names: list[str] | None = None,
    prefix: str = "teacher_encoder.",
) -> Encoder:
    """Load the teacher (or student) encoder of an authors'-layout checkpoint.

    Parameters
    ----------
    path : str or Path
        ``.pth`` file as written by the authors' training code.
    network_map : ndarray of int, shape (C,)
        Network id of every input channel (the checkpoint does not store it).
    network_names : list of str, optional
        Network names; the default atlas order when there are 9 networks.
    prefix : str
        ``"teacher_encoder."`` or ``"student_encoder."``.

    Returns
    -------
    Encoder
        In eval mode.
    """
    path = Path(path)
    obj = read_torch_file(path)
    state = checkpoint_filter_fn(_model_state(obj, path), prefix)
    saved = obj.get("config") if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else None
    try:
        config = config_from_state(state, network_map, saved, network_names)
    except DataError as exc:  # name the file: the user may have passed several models
        raise DataError(f"{path}: {exc}") from None
    _check_sl_sizes(config, state, path)
    encoder = Encoder(config)
    load_state_checked(encoder, state, path)
    for net in encoder.tokenizer.nets:
        if not bool(net.long.kernel_norm_initialized):  # never for a trained model: do what its first forward did
            net.long.init_kernel_norm()
    return encoder.eval()


def load_projection_head(path: str | Path, which: str = "teacher") -> ProjectionHead:
    """Load the ``teacher_predictor`` (or ``student_predictor``) head of an authors' checkpoint.

    Parameters
    ----------
    path : str or Path
        ``.pth`` file.
    which : {"teacher", "student"}
        Which head.

    Returns
    -------
    ProjectionHead
        In eval mode.
    """
    path = Path(path)
    state = _model_state(read_torch_file(path), path)
    p = f"{which}_predictor.mlp."
    try:
        w1, b1, w2, b2 = (state[p + k] for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
    except KeyError:
        raise DataError(f"{path}: no '{p}*' projection head in the checkpoint; wrong model file") from None
    head = ProjectionHead(w1.shape[1], w1.shape[0], w2.shape[0])
    load_state_checked(head, {"fc1.weight": w1, "fc1.bias": b1, "fc2.weight": w2, "fc2.bias": b2}, path)
    return head.eval()
