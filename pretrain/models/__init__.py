"""DuGI-MAE, InfMAE and MAE models with the paper's ablation switches.

    model = create_model("dugi_mae_base", masking="random", ddg=False)  # any ModelConfig field
    loss, pred, mask = model(imgs, pixels)  # imgs: uint8 pixels normalised with IR_MEAN / IR_STD
    model = load_reference_checkpoint("infmae.pth", "infmae", in_chans=1)  # released weights
    export_encoder(model, out_dir)  # model.safetensors + config.json, loadable through timm
    print(format_model_info(model_info("mae_vit_base", image_size=224)))
"""

from pretrain.models.configs import IR_MEAN, IR_STD, MODEL_NAMES, ModelConfig, build_config
from pretrain.models.export import export_encoder
from pretrain.models.info import format_model_info, model_info
from pretrain.models.mae import MaskedAutoencoder, create_model
from pretrain.models.reference import load_reference_checkpoint
from pretrain.models.released import REFERENCE_KINDS

__all__ = [
    "IR_MEAN",
    "IR_STD",
    "MODEL_NAMES",
    "MaskedAutoencoder",
    "REFERENCE_KINDS",
    "ModelConfig",
    "build_config",
    "create_model",
    "export_encoder",
    "format_model_info",
    "load_reference_checkpoint",
    "model_info",
]
