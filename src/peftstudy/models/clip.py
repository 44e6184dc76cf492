"""CLIP ViT-B/16 with its zero-shot head (docs/protocol.md §A.1, §E, §G).

The visual tower is timm's ``vit_base_patch16_clip_quickgelu_224``; its weights come from an OpenAI/OpenCLIP
checkpoint through ``fetch-backbone --format torch`` (timm's own checkpoint filter converts the keys; the
strict check in :func:`peftstudy.models.convert` rejects a missing or unexpected tensor).

The head is CLIP's image projection followed by a cosine classifier over text embeddings. It is built once
from the text tower (:func:`zero_shot_head`, open_clip) and saved as safetensors, so training jobs never load
the text tower. :func:`create_clip` puts it at ``model.head``: the method registry finds the head there
(``get_classifier``), so the projection trains with every method and counts as head, not as inserted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from peftstudy.io import sha256_file
from peftstudy.models import _read_weights, check_fits, create_backbone, pick_device, save_safetensors
from peftstudy.plan.specs import Options, ZeroShotHeadSpec

# The open_clip config of OpenAI's ViT-B/16: both towers use QuickGELU, as OpenAI trained them.
CLIP_MODEL = "ViT-B-16-quickgelu"
# CLIP's learned temperature, fixed at its trained value exp(4.6052) = 100 as the study builds the head.
LOGIT_SCALE = 100.0
# Classes per text-tower forward: 10 x 80 prompts fit any GPU in float32 and keep a CPU job's memory small.
BATCH_CLASSES = 10
# Classes per progress line: 10 lines for ImageNet, so a log shows how far a long CPU job has come.
PROGRESS_CLASSES = 100


class CLIPHead(nn.Module):
    """``proj`` (CLIP's ``visual.proj``, no bias) -> L2-normalise -> ``fc`` (text embeddings x 100, bias 0)."""

    def __init__(self, in_features: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim, bias=False)
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.normalize(self.proj(x), dim=-1))


def class_names(spec: str) -> list[str]:
    """`imagenet`: OpenAI's clean ImageNet-1k names; otherwise a text file, one class a line in label order."""
    if spec == "imagenet":
        # The package's copy, in the WNID order the ImageNet stage labels images by (the same list as open_clip's).
        from peftstudy.tables import CLASSNAMES

        return list(CLASSNAMES)
    names = [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{spec}: no class names (expected one a line, in label order)")
    return names


@torch.no_grad()
def zero_shot_head(
    clip_weights: str | Path,
    classnames: Sequence[str],
    *,
    clip_model: str = CLIP_MODEL,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """The head's tensors (``CLIPHead`` names) from a full CLIP checkpoint, per docs/protocol.md §A.1.

    Row c of ``fc.weight`` is ``100 * normalise(mean_t normalise(text_emb(template_t(class_c))))`` over the 80
    OpenAI ImageNet templates. open_clip loads the checkpoint strictly, text tower included, and computes the
    rows itself (`build_zero_shot_classifier`, no grad). Float32 throughout, as the study keeps the head.
    """
    import open_clip

    model = open_clip.create_model(clip_model, pretrained=str(clip_weights), device=device).eval()
    tokenizer = open_clip.get_tokenizer(clip_model)
    templates = open_clip.OPENAI_IMAGENET_TEMPLATES
    rows, start = [], time.monotonic()
    for first in range(0, len(classnames), PROGRESS_CLASSES):
        part = list(classnames[first : first + PROGRESS_CLASSES])
        weights = open_clip.build_zero_shot_classifier(
            model, tokenizer, part, templates, num_classes_per_batch=BATCH_CLASSES, device=device
        )
        rows.append(weights.T.float().cpu())
        done = first + len(part)
        print(
            f"zero-shot head: {done}/{len(classnames)} classes ({done * len(templates)} prompts) encoded, "
            f"{time.monotonic() - start:.0f} s",
            flush=True,
        )
    fc = LOGIT_SCALE * torch.cat(rows)
    # open_clip applies visual.proj as `x @ proj` (width x embed); a Linear holds its transpose.
    proj = model.visual.proj.detach().T.float().cpu()
    return {"proj.weight": proj.contiguous(), "fc.weight": fc, "fc.bias": torch.zeros(fc.shape[0])}


def create_clip(
    arch: str,
    num_classes: int,
    *,
    head: str | Path | None = None,
    head_sha256: str | None = None,
    weights: str | Path | None = None,
    sha256: str | None = None,
    drop_path: float = 0.0,
    embed_dim: int = 512,
    device: str | torch.device = "cpu",
) -> VisionTransformer:
    """`arch` with the visual `weights` (headless timm safetensors, as `create_backbone`) and the zero-shot `head`.

    Both files load strictly and are sha256-checked when a sum is given. Without `head` the head has the right
    shapes (`embed_dim`, `num_classes`) and PyTorch's default init: for counting, or on the meta device.
    """
    model = create_backbone(arch, 0, weights=weights, sha256=sha256, drop_path=drop_path, device=device)
    state = None
    if head is not None:
        stat = Path(head).stat()
        state = _read_weights(str(head), head_sha256, str(device), stat.st_mtime_ns, stat.st_size)
        embed_dim = state["proj.weight"].shape[0] if "proj.weight" in state else embed_dim
    with torch.device(device):
        model.head = CLIPHead(model.num_features, embed_dim, num_classes)
    if state is not None:
        check_fits(state, model.head.state_dict(), f"zero-shot head {head}", arch, "the head's classes and arch")
        model.head.load_state_dict(state)
    # As timm's own heads keep it: whoever asks the model its class count gets the head's, not create_backbone's 0.
    model.num_classes = num_classes
    return model


def run_zero_shot_head(spec: ZeroShotHeadSpec, options: Options) -> None:
    """`peftstudy run` of a zero-shot-head spec: build the head from the text tower once, save it as safetensors."""
    names = class_names(spec.classnames)
    tensors = zero_shot_head(
        spec.clip, names, clip_model=spec.clip_model, device=pick_device(spec.device, options.threads)
    )
    about = {
        "clip_model": spec.clip_model,
        "clip_weights_sha256": sha256_file(spec.clip),
        "classnames": spec.classnames,
        "num_classes": len(names),
        "logit_scale": LOGIT_SCALE,
    }
    save_safetensors(spec.head, tensors, about)
    print(f"{spec.head}: zero-shot head for {len(names)} classes, sha256 {sha256_file(spec.head)}", flush=True)
