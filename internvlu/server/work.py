"""A job's work, run on the CLI's session in the worker thread: images as `gen`/`edit` make them, answers as `ask`.

Progress goes out as the job's events: `step` after each denoising step (with a low-resolution preview of the
latents), `thought` as a chain of thought's words arrive, `token` as an answer's do, `image` as each image is saved.
Every hook first checks whether the job is to stop, so a cancel takes effect at the next step or token.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from internvlu.cli.session import ImageJob, InputImage, Session
from internvlu.server.jobs import Job
from internvlu.server.outputs import Outputs
from internvlu.server.requests import AskRequest, ImageRequest

PREVIEW_SIDE = 64  # a step's preview, at most this many pixels a side


def latent_preview(latents) -> str | None:
    """The first three latent channels of the first image as a small PNG data URI: a rough look at the layout."""
    if getattr(latents, "ndim", 0) != 4 or latents.shape[1] < 3:
        return None
    channels = latents[0, :3].float()
    low = channels.amin(dim=(1, 2), keepdim=True)
    high = channels.amax(dim=(1, 2), keepdim=True)
    scaled = ((channels - low) / (high - low).clamp_min(1e-6) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(scaled, "RGB")
    scale = PREVIEW_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def run_image(session: Session, outputs: Outputs, request: ImageRequest, job: Job) -> dict:
    inputs = [outputs.keep_input(upload) for upload in request.uploads]
    images = []
    count = len(request.seeds)
    for k, seed in enumerate(request.seeds):
        def on_step(index: int, total: int, latents, k=k) -> None:
            job.check_cancel()
            job.publish("step", {"image": k + 1, "images": count, "step": index + 1, "steps": total,
                                 "preview": latent_preview(latents)})

        def on_thought(text: str, end: bool, k=k) -> None:
            job.check_cancel()
            if text or end:
                job.publish("thought", {"image": k + 1, "text": text, "end": end})

        job.check_cancel()
        path = outputs.image_path(request.prompt, seed)
        result = session.run_image(ImageJob(request.command, request.prompt, seed, path, request.settings, inputs,
                                            on_step=on_step, on_token=job.check_cancel, on_thought=on_thought))
        item = {"id": outputs.register(path), "path": result["path"], "seed": seed, "cot": result["cot"],
                "result": result}
        images.append(item)
        job.publish("image", {"image": k + 1, "images": count, **item})
    return {"kind": "image", "images": images}


def run_ask(session: Session, request: AskRequest, job: Job) -> dict:
    inputs = [InputImage(Path(upload.label), upload.sha256, upload.image) for upload in request.uploads]

    def write(text: str, end: bool) -> None:
        if text:
            job.publish("token", {"text": text})

    result = session.run_ask(request.question, inputs, request.max_new_tokens, request.temperature, request.top_p,
                             request.seed, write, on_token=job.check_cancel)
    return {"kind": "ask", **result}
