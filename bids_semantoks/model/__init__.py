"""Brain-Semantoks encoder: architecture, checkpoints (authors' layout and ours), hub download.

Layout (DINOv2-like): ``config`` (EncoderConfig, presets), ``layers`` (transformer
blocks), ``tokenizer`` (per-network semantic tokenizers), ``encoder``, ``heads``,
``checkpoint`` (the authors' ``.pth`` layout), ``store`` (our safetensors folder),
``hub`` (the released file), ``load`` (one entry point).
"""

from bids_semantoks.model.checkpoint import ModelNotAvailable, checkpoint_filter_fn, load_projection_head
from bids_semantoks.model.config import EncoderConfig, model_preset
from bids_semantoks.model.encoder import Encoder, encoder_features
from bids_semantoks.model.heads import ProjectionHead
from bids_semantoks.model.hub import fetch_official
from bids_semantoks.model.load import default_network_map, load_encoder
from bids_semantoks.model.store import save_encoder

__all__ = [
    "Encoder",
    "EncoderConfig",
    "ModelNotAvailable",
    "ProjectionHead",
    "checkpoint_filter_fn",
    "default_network_map",
    "encoder_features",
    "fetch_official",
    "load_encoder",
    "load_projection_head",
    "model_preset",
    "save_encoder",
]
