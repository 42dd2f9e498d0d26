"""DuGI-MAE pretraining. Importing the package registers the encoders as timm models."""

from pretrain import models  # noqa: F401  (registers dugi_mae_* / infmae_* with timm)
