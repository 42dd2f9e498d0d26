"""Publish an exported encoder (model.safetensors + timm config.json) as a Hub model repo.

Staged first (`--dry-run` stops there; `--stage DIR` says where)::

    README.md           model card: architecture, pretraining data, recipe, timm loading
    config.json         timm's config (architecture, model_args, pretrained_cfg), unchanged
    model.safetensors   the encoder weights, hard-linked from the export folder

Then `create_repo` (exist_ok) and one `upload_folder`. `timm.create_model("hf-hub:OWNER/NAME",
pretrained=True)` loads the result (after `import pretrain` for the hierarchical encoders,
which that import registers with timm). Failures are one `PublishError` line; the staged
folder is kept and a re-run continues (the Hub client skips data it already holds).

The Hub client (token, offline flag, endpoint, error lines) is inf590k.dataset.hub, the one
the dataset's `publish` uses too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from inf590k.dataset.hub import (
    PublishError,
    check_hub_access,
    hub_endpoint,
    hub_errors,
    hub_token,
    refuse_offline,
)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
STAGE_ENTRIES = frozenset({CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, ".gitattributes"})
HUB_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
PAPER = "DuGI-MAE: Improving Infrared Mask Autoencoders via Dual-Domain Guidance (AAAI 2026)"


@dataclass(frozen=True)
class ModelPublishConfig:
    """One field per `inf590k publish-model` option."""

    export_dir: Path
    repo: str  # OWNER/NAME
    dataset_repo: str | None = None  # the dataset repo it was pretrained on, OWNER/NAME
    private: bool = False
    dry_run: bool | Path | None = None  # stage and stop (a folder: stage there; the old form)
    stage: Path | None = None  # staging folder (default: EXPORT_DIR-hub beside the export)
    endpoint: str | None = None  # default: HF_ENDPOINT, else https://huggingface.co


@dataclass
class ModelPublishSummary:
    repo: str
    staged: Path
    architecture: str
    parameters: int
    dry_run: bool
    url: str = ""

    def __str__(self) -> str:
        what = f"{self.architecture} encoder ({self.parameters / 1e6:.1f}M parameters)"
        if self.dry_run:
            return f"publish-model (dry run): {what} + card staged in {self.staged}"
        return f"publish-model: {what} -> {self.url}"


# ----------------------------------------------------------------------------- staging


def read_export(export_dir: Path) -> dict[str, Any]:
    """config.json of an export folder, after checking the weights are there too."""
    export_dir = Path(export_dir)
    config_path, weights = export_dir / CONFIG_FILE, export_dir / WEIGHTS_FILE
    if not config_path.is_file() or not weights.is_file():
        raise PublishError(
            f"{export_dir} lacks {CONFIG_FILE} or {WEIGHTS_FILE}: "
            "make it with `inf590k export CHECKPOINT --out DIR`"
        )
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise PublishError(
            f"{config_path} is not JSON ({err}): export the checkpoint again"
        ) from err
    if "architecture" not in config:
        raise PublishError(f"{config_path} names no timm architecture: export the checkpoint again")
    return config


def count_parameters(weights: Path) -> int:
    """Parameters in a safetensors file, from its header alone (no tensor is loaded)."""
    total = 0
    with safe_open(str(weights), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            count = 1
            for side in handle.get_slice(name).get_shape():
                count *= side
            total += count
    return total


def training_lines(export_dir: Path) -> list[str]:
    """The export card's "## Training" bullet lines, minus the data line (local paths)."""
    card = Path(export_dir) / CARD_FILE
    if not card.is_file():
        return []
    lines, inside = [], False
    for line in card.read_text().splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Training"
            continue
        if inside and line.startswith("- ") and not line.startswith(("- shards:", "- data:")):
            lines.append(line)
    return lines


def _check_stage_folder(stage: Path, export_dir: Path) -> None:
    stage, export_dir = Path(stage).resolve(), Path(export_dir).resolve()
    if stage == export_dir or export_dir in stage.parents or stage in export_dir.parents:
        raise PublishError(f"staging folder {stage} overlaps the export folder: pick another one")
    if stage.is_dir():
        foreign = sorted(p.name for p in stage.iterdir() if p.name not in STAGE_ENTRIES)
        if foreign:
            raise PublishError(
                f"{stage} holds {foreign[0]!r}, which publish-model did not stage: "
                "pick an empty or earlier staging folder"
            )


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link (weights can be large), copy across file systems; replace a stale target."""
    if target.exists():
        if os.path.samefile(source, target):
            return
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def weights_licence(timm_config: dict[str, Any]) -> dict[str, Any]:
    """The licence `inf590k export` derived from the training data's sources; "unknown" when
    the export does not record one (weights are never assumed to be under the code's licence)."""
    recorded = (timm_config.get("pretraining_data") or {}).get("license") or {}
    if recorded.get("id"):
        return {
            "id": recorded["id"],
            "name": recorded.get("name"),
            "summary": recorded.get("summary") or "",
        }
    return {
        "id": "unknown",
        "name": None,
        "summary": "Unknown: the export does not record the training data's licences; check "
        "them before using or sharing these weights.",
    }


def model_card(config: ModelPublishConfig, timm_config: dict[str, Any], parameters: int) -> str:
    """README.md of the model repo: metadata for the Hub, then what it is and how to load it."""
    from huggingface_hub import (  # the Hub client loads in ~0.5 s: when used
        ModelCard,
        ModelCardData,
    )

    architecture = timm_config["architecture"]
    recipe = timm_config.get("pretraining_config", {})
    args = timm_config.get("model_args", {})
    pretrained = timm_config.get("pretrained_cfg", {})
    hierarchical = recipe.get("encoder", "hierarchical") == "hierarchical"
    endpoint = hub_endpoint(config.endpoint)
    licence = weights_licence(timm_config)
    data = ModelCardData(
        library_name="timm",
        license=licence["id"],
        license_name=licence.get("name"),
        pipeline_tag="image-feature-extraction",
        tags=[
            "infrared",
            "thermal",
            "masked-autoencoder",
            "dugi-mae",
            "inf590k",
            "image-feature-extraction",
            "timm",
        ],
        datasets=[config.dataset_repo] if config.dataset_repo else None,
    )
    name = recipe.get("name", architecture)
    size = "x".join(str(s) for s in pretrained.get("input_size", [])[1:]) or "?"
    body = [
        f"# {name} encoder, masked-autoencoder pretraining on infrared images",
        "",
        f"The encoder of a {'DuGI-MAE-family' if hierarchical else 'MAE'} masked autoencoder "
        "pretrained on single-channel infrared (thermal) images with the `inf590k` toolkit, "
        "as timm weights. The decoder is not included.",
        "",
        "## Architecture",
        "",
        f"- timm architecture: `{architecture}`, {parameters:,} parameters",
        f"- encoder: {recipe.get('encoder', '?')}, embedding dims {args.get('embed_dims') or args.get('embed_dim')}, "
        f"depths {args.get('depths') or args.get('depth')}, heads {args.get('num_heads')}, "
        f"patch sizes {args.get('patch_sizes') or args.get('patch_size')}",
        f"- input: {args.get('in_chans', 1)} channel(s), {size} pretraining size; "
        f"normalise `(pixel / 255 - {pretrained.get('mean', ['?'])[0]}) / "
        f"{pretrained.get('std', ['?'])[0]}` on the 8-bit view",
    ]
    if hierarchical:
        body.append("- features: four maps at strides 4, 8, 16, 32 (`features_only=True`)")
    body += ["", "## Licence of the weights", "", licence["summary"]]
    body += ["", "## Pretraining data", ""]
    if config.dataset_repo:
        body.append(
            f"[{config.dataset_repo}]({endpoint}/datasets/{config.dataset_repo}): WebDataset "
            "shards of deduplicated infrared images, one config per resolution bin."
        )
    else:
        body.append("Not recorded (publish with `--dataset-repo OWNER/NAME` to link it).")
    recorded = (timm_config.get("pretraining_data") or {}).get("data") or {}
    sources = ", ".join(str(s.get("name") or s.get("id")) for s in recorded.get("sources") or [])
    name = str(recorded.get("name") or "")
    if HUB_REPO_ID.match(name) or recorded.get("samples") or sources:
        body += [  # a local path stays private; a Hub repo id is worth naming
            "",
            "Trained on "
            + (f"{name}, " if HUB_REPO_ID.match(name) else "")
            + (f"{recorded['samples']} samples" if recorded.get("samples") else "samples n/a")
            + f"; sources: {sources or 'not recorded'}.",
        ]
    body += [
        "",
        "## Recipe",
        "",
        f"- masking: {recipe.get('masking', '?')}, mask ratio {recipe.get('mask_ratio', '?')}",
        f"- dual-domain guidance (DDG): {recipe.get('ddg', '?')}"
        + (
            f" ({recipe.get('ddg_filter')}, depth {recipe.get('ddg_depth')})"
            if recipe.get("ddg")
            else ""
        ),
        f"- decoder: {recipe.get('decoder_depth', '?')} blocks of width "
        f"{recipe.get('decoder_dim', '?')}, normalised-pixel loss {recipe.get('norm_pix_loss', '?')}",
        *training_lines(config.export_dir),
        "",
        "## Load it with timm",
        "",
        "```python",
        "import timm",
    ]
    if hierarchical:
        body += [
            "import pretrain  # from the inf590k toolkit: registers the DuGI-MAE encoders with timm",
            "",
            f'backbone = timm.create_model("hf-hub:{config.repo}", pretrained=True, '
            "features_only=True)",
            "features = backbone(images)  # [N, 1, H, W] -> 4 maps at H/4 ... H/32",
        ]
    else:
        body += [
            "",
            f'encoder = timm.create_model("hf-hub:{config.repo}", pretrained=True)',
            "tokens = encoder.forward_features(images)  # [N, 1, H, W] -> [N, 1 + L, C]",
        ]
    body += [
        "```",
        "",
        "## Files",
        "",
        f"- `{WEIGHTS_FILE}`: encoder weights (safetensors)",
        f"- `{CONFIG_FILE}`: timm configuration; `pretraining_config` holds every model switch",
        "",
        "## Citation",
        "",
        f"Method: {PAPER}.",
        "",
    ]
    text = "---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body)
    return str(ModelCard(text))


def stage_model(config: ModelPublishConfig, stage: Path) -> ModelPublishSummary:
    """Write the model repo layout into `stage` (idempotent; weights hard-linked)."""
    timm_config = read_export(config.export_dir)
    _check_stage_folder(stage, config.export_dir)
    stage.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        _link_or_copy(Path(config.export_dir) / name, stage / name)
    parameters = count_parameters(stage / WEIGHTS_FILE)
    card = stage / CARD_FILE
    tmp = card.with_name(card.name + ".tmp")
    tmp.write_text(model_card(config, timm_config, parameters))
    os.replace(tmp, card)
    return ModelPublishSummary(
        repo=config.repo,
        staged=stage,
        architecture=timm_config["architecture"],
        parameters=parameters,
        dry_run=bool(config.dry_run),
    )


# ----------------------------------------------------------------------------- the Hub


DRY_RUN_INSTEAD = "or stage only, with --dry-run"


def _kept(stage: Path) -> str:
    return f"the staged folder {stage} is kept; re-run to continue"


def publish_model(config: ModelPublishConfig) -> ModelPublishSummary:
    """Stage an export folder as a model repo, then (unless dry run) upload it."""
    for repo, flag in ((config.repo, "--repo"), (config.dataset_repo, "--dataset-repo")):
        if repo is not None and (repo.count("/") != 1 or not all(repo.split("/"))):
            raise PublishError(f"{flag} {repo!r}: write OWNER/NAME, e.g. my-lab/dugi-mae-base")
    token = ""
    if not config.dry_run:  # no upload can work: say so before staging anything
        refuse_offline(DRY_RUN_INSTEAD)
        token = hub_token()
    default = Path(config.export_dir).resolve()
    folder = config.dry_run if isinstance(config.dry_run, (str, Path)) else None
    stage = Path(folder or config.stage or default.parent / f"{default.name}-hub")
    summary = stage_model(config, stage)
    if config.dry_run:
        return summary
    from huggingface_hub import HfApi  # the Hub client loads in ~0.5 s: when used

    endpoint = hub_endpoint(config.endpoint)
    refuse_offline(DRY_RUN_INSTEAD)
    check_hub_access(endpoint, token, _kept(stage))
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(f"creating {config.repo}", endpoint, token, _kept(stage)):
        summary.url = str(
            api.create_repo(config.repo, repo_type="model", private=config.private, exist_ok=True)
        )
    with hub_errors(f"uploading to {config.repo}", endpoint, token, _kept(stage)):
        api.upload_folder(
            repo_id=config.repo,
            repo_type="model",
            folder_path=stage,
            allow_patterns=[CARD_FILE, CONFIG_FILE, WEIGHTS_FILE],
            commit_message=f"Upload {summary.architecture} encoder weights, timm config and card",
        )
    return summary
