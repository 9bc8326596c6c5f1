"""Generation parameters inside PNG files: a text chunk named ``kuosan`` holding JSON, and a human-readable
``parameters`` chunk in the layout other diffusion front ends write (a first line, then ``Key: value, ...``).

    data = encode_png(img, {"model": "fm", "sampler": "heun", "steps": 18, "seed": 5, "class": 3})
    read_png_params(data)  # -> {"model": "fm", "sampler": "heun", ...}

Both chunks sit before the image data, so reading them decodes no pixels. The JSON is the record; the
``parameters`` text is for people and for other tools, and is never parsed back here.
"""

from __future__ import annotations

import io
import json

from kuosan.errors import KuosanError

__all__ = ["CHUNK", "encode_png", "read_png_params", "parameters_text"]

CHUNK = "kuosan"            # the text chunk that holds the parameters as JSON
_MAX_JSON = 64 << 10        # parameters are a few hundred bytes; a bigger chunk is not ours
_LABELS = (                 # key in the JSON -> label in the human-readable line, in this order
    ("steps", "Steps"), ("sampler", "Sampler"), ("schedule", "Schedule"), ("guidance", "CFG scale"),
    ("guidance_interval", "Guidance interval"), ("seed", "Seed"), ("size", "Size"), ("strength", "Strength"),
    ("model", "Model"), ("checksum", "Model hash"), ("kuosan", "Version"),
)


def parameters_text(params: dict) -> str:
    """The human-readable summary: what was made (mode, class), then ``Steps: 18, Sampler: heun, ...``."""
    head = [str(params.get("mode", "generate"))]
    if params.get("class") is not None:
        name = params.get("class_name")
        head.append(f"class {params['class']}" + (f" ({name})" if name else ""))
    parts = []
    for key, label in _LABELS:
        value = params.get(key)
        if value is None:
            continue
        if key == "checksum":
            value = str(value)[:12]
        elif key == "kuosan":
            value = f"kuosan {value}"
        elif isinstance(value, (list, tuple)):
            value = "-".join(str(v) for v in value)
        parts.append(f"{label}: {value}")
    return ", ".join(head) + "\n" + ", ".join(parts)


def encode_png(img_uint8_hwc, params: dict, scale: int = 1) -> bytes:
    """A uint8 [H, W, C] image (C = 1 or 3) as PNG bytes carrying ``params`` (JSON-serialisable), optionally
    enlarged ``scale`` times (nearest neighbour)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    try:
        text = json.dumps(params, ensure_ascii=False, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise KuosanError(f"PNG parameters must be plain JSON values: {e}") from None
    arr = img_uint8_hwc[..., 0] if img_uint8_hwc.shape[-1] == 1 else img_uint8_hwc
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    info = PngInfo()
    info.add_itxt(CHUNK, text)  # iTXt: UTF-8, so class names in any script survive
    info.add_text("parameters", parameters_text(params))  # tEXt when Latin-1 will do, else iTXt
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_png_params(data: bytes) -> dict | None:
    """The parameters a PNG carries in its ``kuosan`` chunk; None for a PNG without them (or with a chunk that
    is not a JSON object). Data that is not a PNG raises one KuosanError line."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, text = im.format, im.info.get(CHUNK)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise KuosanError(f"not a readable image: {e}") from None
    if fmt != "PNG":
        raise KuosanError(f"a {fmt} image carries no kuosan parameters; drop a PNG that kuosan wrote")
    if not isinstance(text, str) or len(text) > _MAX_JSON:
        return None
    try:
        params = json.loads(text)
    except ValueError:
        return None
    return params if isinstance(params, dict) else None
