"""DuGI-MAE, InfMAE and MAE models with the paper's ablation switches."""

from pretrain.models.configs import IR_MEAN, IR_STD, MODEL_NAMES, ModelConfig, build_config
from pretrain.models.export import export_encoder
from pretrain.models.info import format_model_info, model_info
from pretrain.models.mae import MaskedAutoencoder, create_model

__all__ = [
    "IR_MEAN",
    "IR_STD",
    "MODEL_NAMES",
    "MaskedAutoencoder",
    "ModelConfig",
    "build_config",
    "create_model",
    "export_encoder",
    "format_model_info",
    "model_info",
]
