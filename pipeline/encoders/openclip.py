"""The built-in encoder family: frozen open_clip models, described as an EmbeddingSpace without
loading weights, and run to produce the arrays a space stores.

Families: CLIP (open_clip's own ViT towers: class token, value-path features, causal text trimmed
to the batch's longest caption), and timm image towers (SigLIP, SigLIP2, Perception Encoder, ...:
class token where the trunk has one, attention-pool heads) with open_clip's text towers, causal or
bidirectional (SigLIP's, pooled at the last position, is never trimmed).

An encoder is (model name, weights), never the name alone: weights are a pretrained tag, a local
checkpoint (identified by the sha256 of its bytes), or a seeded random init for tests and demos.
Tokenizers that open_clip fetches from the Hugging Face hub can be given as a local folder
(`tokenizer=`), identified by the sha256 of its files."""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.tokenizer import HFTokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip.transformer import text_global_pool
from PIL import Image
from torchvision import transforms

from cache_schemas import EmbeddingSpace, VlcacheError

from ..images import LOAD_POLICY
from ..preprocess import ImageSteps
from .base import Encoder, EncoderRequest, Tokenizer, UnknownModelError, file_sha256

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)  # registers vlcache-tiny and friends by file stem
RANDOM_SEED = 0


def _split_transform(transform: transforms.Compose) -> tuple[transforms.Compose, tuple, tuple]:
    """open_clip's eval transform as its PIL steps and the mean and std of its final Normalize (it
    ends ToTensor, Normalize for every model it builds)."""
    *steps, to_tensor, normalize = transform.transforms
    if not (isinstance(to_tensor, transforms.ToTensor) and isinstance(normalize, transforms.Normalize)):
        raise VlcacheError(f"unexpected open_clip eval transform: {transform}")
    return transforms.Compose(steps), tuple(normalize.mean), tuple(normalize.std)


def _pixel_steps(space: EmbeddingSpace) -> tuple[ImageSteps, tuple, tuple]:
    """open_clip's eval transform for the space as torch-free image steps, checked against open_clip's
    own (a release that changed its preprocessing would otherwise shift every pixel silently), and the
    mean and std batches are normalised with."""
    cfg = PreprocessCfg(**{k: v for k, v in space.preprocess.items() if k != "load"})
    reference, mean, std = _split_transform(image_transform_v2(cfg, is_train=False))
    size = (cfg.size, cfg.size) if isinstance(cfg.size, int) else tuple(cfg.size)
    steps = ImageSteps(size, cfg.resize_mode, cfg.interpolation, cfg.fill_color)
    for height, width in ((37, 61), (50, 23), (5, 9)):  # landscape, portrait, smaller than any crop
        image = Image.fromarray(np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8))
        if not np.array_equal(steps(image), np.asarray(reference(image)).transpose(2, 0, 1)):
            raise VlcacheError(f"vlcache's image steps {steps} disagree with open_clip {open_clip.__version__}'s "
                               f"eval transform {reference}; install an open_clip_torch version vlcache supports")
    return steps, mean, std


def check_model(name: str) -> None:
    if name.startswith(("hf-hub:", "local-dir:")) or name in open_clip.list_models():
        return
    close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
    raise UnknownModelError(f"unknown model {name!r}{hint}")


def weights_id(model: str, pretrained: str | None) -> str:
    if pretrained is None:
        return f"random:{RANDOM_SEED}"
    if os.path.isfile(pretrained):
        return f"sha256:{file_sha256(pretrained)}"
    if open_clip.get_pretrained_cfg(model, pretrained):
        return f"pretrained:{pretrained}"
    tags = open_clip.list_pretrained_tags_by_model(model)
    raise UnknownModelError(
        f"--pretrained {pretrained!r} is neither a file nor a tag of {model} (tags: {', '.join(tags) or 'none'})"
    )


def describe_model(request: EncoderRequest) -> EmbeddingSpace:
    """The space `request` produces, computed from the architecture alone (no weights, no download)."""
    check_model(request.model)
    weights = weights_id(request.model, request.pretrained)
    tag_cfg = _tag_cfg(request.model, request.pretrained, weights)
    with _quiet():
        model = open_clip.create_model(request.model, pretrained=None, device="meta",
                                       force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)))
    _check_layer(request.layer, model)
    tokens = _image_tokens(request, model.visual)
    if request.projected and getattr(model.visual, "proj", None) is None:
        raise UnknownModelError(f"{request.model}'s image tower has no linear projection into the joint space "
                                "(it pools with an attention head): store raw tokens (drop --projected)")
    preprocess = open_clip.transform.merge_preprocess_dict(model.visual.preprocess_cfg, tag_cfg)
    text = _TextTower.of(model)
    tokenizer = tokenizer_id(request.model, request.tokenizer)
    return EmbeddingSpace(
        model=request.model,
        weights=weights,
        preprocess={**preprocess, "load": LOAD_POLICY},
        context_length=int(model.context_length),
        text_trim="causal" if text is not None and text.causal else "none",
        dims=_dims(model),
        image_tokens=tokens,
        layer=request.layer,
        projected=request.projected,
        dtype=request.dtype,
        tokenizer=tokenizer,
        checkpoint_path=os.path.abspath(request.pretrained) if weights.startswith("sha256:") else None,
        tokenizer_path=os.path.abspath(request.tokenizer) if tokenizer else None,
        versions={"open_clip": open_clip.__version__, "torch": torch.__version__.split("+")[0]},
    )


def _image_tokens(request: EncoderRequest, visual: torch.nn.Module) -> tuple[str, ...]:
    """The requested image tokens, checked against the tower; by default patches, and the class token
    where the tower has one."""
    has_cls = _has_cls(visual)
    if request.image_tokens is None:
        return ("patches", "cls") if has_cls else ("patches",)
    if "cls" in request.image_tokens and not has_cls:
        raise UnknownModelError(f"{request.model}'s image tower has no class token: drop 'cls' from --tokens")
    if "values" in request.image_tokens and not _has_value_path(visual):
        raise UnknownModelError(f"{request.model}'s image tower has no CLIP-style value path: "
                                "drop 'values' from --tokens")
    return tuple(request.image_tokens)


def _has_cls(visual: torch.nn.Module) -> bool:
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:  # a timm tower
        return getattr(trunk, "cls_token", None) is not None
    return getattr(visual, "class_embedding", None) is not None


def tokenizer_id(model: str, folder: str | None) -> str | None:
    """None when open_clip's own tokenizer for the model is available here; "sha256:..." of a local
    tokenizer folder's files. One line naming the fix when the model's tokenizer lives on the hub."""
    hub_name = _text_cfg(model).get("hf_tokenizer_name")
    if folder is not None:
        if not hub_name:
            raise UnknownModelError(f"--tokenizer is for models whose tokenizer comes from the Hugging Face hub; "
                                    f"{model} uses open_clip's built-in tokenizer")
        if not os.path.isdir(folder):
            raise UnknownModelError(f"--tokenizer {folder} is not a folder (save one with tokenizer.save_pretrained)")
        _check_tokenizer_folder(model, folder)
        return f"sha256:{folder_sha256(folder)}"
    if hub_name:
        try:
            with _quiet():
                open_clip.get_tokenizer(model)
        except Exception as exc:  # offline, not cached, no transformers: any of them means no tokenizer
            raise UnknownModelError(
                f"{model} tokenizes with the Hugging Face tokenizer {hub_name}, which cannot be loaded here "
                f"({type(exc).__name__}); pass --tokenizer DIR, a local copy of it (tokenizer.save_pretrained)"
            ) from None
    return None


def _check_tokenizer_folder(model: str, folder: str) -> None:
    """Load the folder's tokenizer and tokenize one text, here in the driver, so that an empty or wrong folder
    is one line before anything is registered rather than a tokenizer library's error once the space exists."""
    try:
        with _quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a probe: its warnings come again when the tokenizer is used
            TextTokenizer(model, folder)(["a photo"])
    except Exception as exc:  # transformers, sentencepiece and tiktoken each fail in their own way
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UnknownModelError(f"--tokenizer {folder} holds no tokenizer {model} can load ({type(exc).__name__}: "
                                f"{reason}); save one there with tokenizer.save_pretrained") from None


def _text_cfg(model: str) -> dict:
    return (open_clip.get_model_config(model) or {}).get("text_cfg", {})


def folder_sha256(folder: str) -> str:
    """One digest of every file under `folder` (names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            digest.update(bytes.fromhex(file_sha256(str(path))))
    return digest.hexdigest()


def _tag_cfg(model: str, pretrained: str | None, weights: str) -> dict:
    """open_clip's settings for a pretrained tag (preprocessing, QuickGELU); none for other weights."""
    return open_clip.get_pretrained_cfg(model, pretrained) if weights.startswith("pretrained:") else {}


@contextmanager
def _quiet():
    """Silence open_clip's "initialized randomly" warning: the space's weights id already says so."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _n_blocks(model: torch.nn.Module) -> dict[str, int]:
    visual = model.visual
    image = len(visual.transformer.resblocks) if hasattr(visual, "transformer") else len(visual.trunk.blocks)
    text = model.transformer if hasattr(model, "token_embedding") else getattr(model.text, "transformer", None)
    return {"image": image, "text": len(text.resblocks) if text is not None else image}


def _has_value_path(visual: torch.nn.Module) -> bool:
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    return bool(blocks) and isinstance(getattr(blocks[-1], "attn", None), torch.nn.MultiheadAttention) \
        and getattr(visual, "proj", None) is not None


def _check_layer(layer: int, model: torch.nn.Module) -> None:
    for tower, n in _n_blocks(model).items():
        if not -n <= layer < n:
            raise UnknownModelError(f"--layer {layer} is out of range: the {tower} tower has {n} blocks")


def _dims(model: torch.nn.Module) -> dict[str, int]:
    grid = getattr(model.visual, "grid_size", None)
    patches = int(np.prod(grid)) if grid else int(model.visual.trunk.patch_embed.num_patches)
    patch_dim = getattr(getattr(model.visual, "transformer", None), "width", None) or model.visual.trunk.num_features
    text = _TextTower.of(model)
    text_dim = text.width if text else model.text.output_dim
    # timm towers have no output_dim: the text tower's (or the model config's) embedding width is the joint one
    embed_dim = getattr(model.visual, "output_dim", None) or getattr(getattr(model, "text", None), "output_dim", None)
    return {"patches": patches, "patch_dim": int(patch_dim), "text_dim": int(text_dim), "embed_dim": int(embed_dim)}


@dataclass
class _TextTower:
    """The parts of a CLIP-style text transformer, for the causal, trimmed forward pass."""

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor
    transformer: torch.nn.Module
    attn_mask: torch.Tensor | None
    ln_final: torch.nn.Module
    projection: torch.nn.Module | torch.Tensor | None
    pool_type: str
    eos_id: int | None
    width: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> _TextTower | None:
        if hasattr(model, "token_embedding"):  # open_clip.CLIP keeps its text tower inline
            return cls(model.token_embedding, model.positional_embedding, model.transformer, model.attn_mask,
                       model.ln_final, model.text_projection, model.text_pool_type,
                       getattr(model, "text_eos_id", None), model.transformer.width)
        text = getattr(model, "text", None)
        if type(text).__name__ == "TextTransformer" and getattr(text, "cls_emb", None) is None:
            return cls(text.token_embedding, text.positional_embedding, text.transformer, text.attn_mask,
                       text.ln_final, text.text_projection, text.pool_type, text.eos_id, text.width)
        return None  # Hugging Face or CoCa text towers: run through open_clip's own code

    @property
    def causal(self) -> bool:
        # Pooled at a real token: padding after the longest text changes no output. (Pooled at the
        # last position, the pooled token would be padding, which a trimmed pass moves.)
        return self.attn_mask is not None and self.pool_type in ("argmax", "eos")

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return x
        return self.projection(x) if isinstance(self.projection, torch.nn.Module) else x @ self.projection


def text_features(model: torch.nn.Module, ids: torch.Tensor, n_tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
    """`model.encode_text(ids, normalize=True)`, differentiable; a causal tower runs only up to the
    longest text's `n_tokens` (its real tokens never attend to the padding after them: the same
    features for a fraction of the compute on short captions, which is what training loops feed it)."""
    tower = _TextTower.of(model)
    if tower is None or not tower.causal:
        return model.encode_text(ids, normalize=True)
    length = int(max(n_tokens))
    ids = ids[:, :length]
    x = tower.token_embedding(ids) + tower.positional_embedding[:length]
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    return F.normalize(tower.project(text_global_pool(tower.ln_final(x), ids, tower.pool_type, tower.eos_id)), dim=-1)


class TextTokenizer(Tokenizer):
    """open_clip's tokenizer for a model (or a local copy of its Hugging Face tokenizer), plus each
    text's count of real (non-pad) tokens."""

    def __init__(self, model: str, folder: str | None = None):
        if folder is None:
            with _quiet():
                self.tokenizer = open_clip.get_tokenizer(model)
        else:
            cfg = _text_cfg(model)
            self.tokenizer = HFTokenizer(folder, context_length=cfg.get("context_length", 77),
                                         **cfg.get("tokenizer_kwargs", {}))
        self.pad_id = getattr(getattr(self.tokenizer, "tokenizer", None), "pad_token_id", None) or 0

    def __call__(self, texts):
        ids = self.tokenizer(list(texts))
        return ids, (ids != self.pad_id).sum(dim=1).numpy().astype(np.int32)


class OpenClipEncoder(Encoder):
    """A frozen open_clip model (CLIP-architecture towers: causal text trimming, value-path features)."""

    @classmethod
    def describe(cls, request: EncoderRequest) -> EmbeddingSpace:
        return describe_model(request)

    @classmethod
    def tokenizer(cls, space: EmbeddingSpace) -> Tokenizer:
        return TextTokenizer(space.model, space.tokenizer_path)

    def __init__(self, space: EmbeddingSpace, pretrained: str | None, device: str = "cpu"):
        super().__init__(space, pretrained, device)
        torch.manual_seed(RANDOM_SEED)  # random-init weights are part of the space's identity
        tag_cfg = _tag_cfg(space.model, pretrained, space.weights)
        with _quiet():
            self.model = open_clip.create_model(space.model, pretrained=pretrained, device=self.device,
                                                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False))).eval()
        self.blocks = _n_blocks(self.model)
        self.model.requires_grad_(False)
        self._steps, self._mean, self._std = _pixel_steps(space)
        self.text_tower = _TextTower.of(self.model)

    @classmethod
    def image_transform(cls, space: EmbeddingSpace) -> ImageSteps:
        return _pixel_steps(space)[0]

    def preprocess(self, image):
        """The transform's image steps (resize, crop) only: a uint8 (3, H, W) tensor. Scaling and
        normalising run batched where the batch is encoded (on the GPU there), not image by image in
        the decode threads, where they held the interpreter lock the encoding thread needs."""
        return torch.from_numpy(self._steps(image))

    def normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels as ToTensor then Normalize make them (the same float32 operations); float
        pixels are taken as already normalised."""
        if pixels.dtype != torch.uint8:
            return pixels
        mean, std = (torch.tensor(v, device=pixels.device).view(1, -1, 1, 1) for v in (self._mean, self._std))
        return (pixels.float().div(255) - mean) / std

    def _autocast(self):
        # On CUDA, bf16 matmuls for float16 stores (storage rounds as much); float32 stores get fp32.
        enabled = self.device.type == "cuda" and self.space.dtype == "float16"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)

    def _to_numpy(self, x: torch.Tensor) -> np.ndarray:
        # Cast where the tensor is (half the bytes to copy back from a GPU for float16 stores).
        return x.to(getattr(torch, self.space.dtype)).cpu().numpy()

    # -- text -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_texts(self, ids: torch.Tensor, n_tokens: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Per-text token embeddings (real tokens only) and L2-normalised global embeddings."""
        ids = ids.to(self.device, non_blocking=True)
        with self._autocast():
            if self.space.text_trim == "causal":
                # A causal tower's real tokens never attend to the padding after them: dropping it
                # changes no output and saves most of the compute on short captions.
                tokens, pooled = self._causal_text(ids[:, : int(n_tokens.max())])
            else:
                tokens, pooled = self._full_text(ids)
        tokens = self._to_numpy(tokens)
        return [tokens[i, :n] for i, n in enumerate(n_tokens)], self._to_numpy(F.normalize(pooled.float(), dim=-1))

    def _layer_index(self, tower: str) -> int:
        return self.space.layer % self.blocks[tower]

    def _causal_text(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tower, length = self.text_tower, ids.shape[1]
        x = tower.token_embedding(ids) + tower.positional_embedding[:length]
        index = self._layer_index("text")
        x, (tokens,) = tower.transformer.forward_intermediates(
            x, attn_mask=tower.attn_mask[:length, :length], indices=[index])
        tokens = tower.ln_final(tokens)
        pooled = tower.project(text_global_pool(tower.ln_final(x), ids, tower.pool_type, tower.eos_id))
        return (tower.project(tokens) if self.space.projected else tokens), pooled

    def _full_text(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_intermediates(text=ids, text_indices=[self._layer_index("text")],
                                               normalize_intermediates=True, normalize=False)
        tokens = out["text_intermediates"][0]
        if self.space.projected:
            if self.text_tower is None:
                raise VlcacheError(f"projected text tokens are not supported for {self.space.model}'s text tower")
            tokens = self.text_tower.project(tokens)
        return tokens, out["text_features"]

    # -- images ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        """The image arrays of the space for a batch (B, 3, H, W): image_patches, image_cls, image_global."""
        pixels = self.normalised(pixels.to(self.device, non_blocking=True))
        with self._autocast(), self._last_block_input() as last_input:
            out = self.model.forward_intermediates(
                image=pixels, image_indices=[self._layer_index("image")], normalize_intermediates=True,
                image_output_fmt="NLC", image_output_extra_tokens=True, normalize=False)
            arrays = {"image_global": F.normalize(out["image_features"].float(), dim=-1)}
            if "values" in self.space.image_tokens:
                arrays["image_values"] = self._value_path(last_input[0])
        if "patches" in self.space.image_tokens:
            arrays["image_patches"] = self._project_image(out["image_intermediates"][0])
        if "cls" in self.space.image_tokens:  # describe() checked the tower has one, first of its prefix tokens
            arrays["image_cls"] = self._project_image(out["image_intermediates_prefix"][0][:, 0])
        return {name: self._to_numpy(value) for name, value in arrays.items()}

    @contextmanager
    def _last_block_input(self):
        """Capture what enters the image tower's last block (only when value features are stored)."""
        captured: list[torch.Tensor] = []
        if "values" not in self.space.image_tokens:
            yield captured
            return
        block = self.model.visual.transformer.resblocks[-1]
        me = threading.get_ident()

        def capture(module, args) -> None:
            if threading.get_ident() == me:  # a worker's threads share the model: their forwards are not ours
                captured.append(args[0])

        handle = block.register_forward_pre_hook(capture)
        try:
            yield captured
        finally:
            handle.remove()

    def _value_path(self, x: torch.Tensor) -> torch.Tensor:
        """MaskCLIP's dense features: the last block's value projection and output projection, without
        the attention that pools every patch into the class token, then the tower's final norm and
        projection. Patch features that live in the joint space, from the same single pass."""
        visual = self.model.visual
        block = visual.transformer.resblocks[-1]
        width = x.shape[-1]
        value = F.linear(block.ln_1(x), block.attn.in_proj_weight[2 * width:], block.attn.in_proj_bias[2 * width:])
        dense = visual.ln_post(block.attn.out_proj(value)) @ visual.proj  # (B, 1 + P, E)
        return dense[:, -self.space.dims["patches"]:]

    def _project_image(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.model.visual.proj if self.space.projected else x  # describe() refused towers without one
