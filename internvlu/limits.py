"""The one table of limits and choices on what a user may ask for: the CLI, the pipeline, the server and the TensorRT
engine profile all read these, so a request refused in one place is refused (with the same numbers) in all.

Sizes are output pixels per side; the lower bound of a generated side is also the model's latent-token
stride (16 for InternVL-U), which the pipeline checks against the loaded checkpoint.
"""

MIN_SIDE = 16
MAX_SIDE = 4096
MAX_STEPS = 1000
MAX_IMAGES_PER_PROMPT = 64  # num_images_per_prompt of one pipeline call
MAX_IMAGES_PER_COMMAND = 1000  # `-n` of one CLI command (one pipeline call per image)
MAX_NEW_TOKENS = 4096  # a chain of thought (it must fit the head's conditioning)
MAX_ANSWER_TOKENS = 32768  # an `ask` answer
MAX_SEED = 2**63 - 1
MAX_ASPECT = 16  # W:H or H:W

# `internvlu serve`: what one request may ask for (an image's pixels are capped by internvlu.images.MAX_PIXELS).
MAX_PROMPT_CHARS = 20_000  # a prompt or question; the pipeline then refuses one too long for the conditioning
MAX_IMAGES_PER_REQUEST = 10  # `n` of one request, OpenAI's own cap
MAX_INPUT_IMAGES = 8  # images attached to one edit or question
MAX_REQUEST_BYTES = 48 * 1024 * 1024  # a whole request body: a few large photos, even in base64
DEFAULT_QUEUE = 16  # jobs waiting behind the running one, `--max-queue`
MAX_QUEUE = 10_000

DEVICES = ("auto", "cuda", "cpu", "mps")
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
HEAD_BACKENDS = ("auto", "torch", "onnx", "trt")  # where the head's denoise step runs
ACCEL_LEVELS = ("off", "safe", "fast")  # approximate step and branch caching (runtime.step_cache); off is exact
