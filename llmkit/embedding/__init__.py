"""Embeddings (the package is `embedding`, so the name `llmkit.embed` stays the function): texts → vectors, and what to do with them (search, classify, cluster).

Python API (mirrors the CLI):
    llmkit.embed(["a phrase", ...])            → float32 matrix, rows L2-normalized
    embed_file("in.txt", "vectors.parquet")     → the streaming, resumable batch job (here, or on
                                                  Ray with ray="auto"); options: JobOptions
    search.similar(...), classify.train(...), cluster.cluster(...)
"""

from __future__ import annotations

from llmkit.embedding.choices import DEFAULT_MODEL
from llmkit.embedding.encoders import load_encoder
from llmkit.embedding.options import JobOptions

__all__ = ["embed", "embed_file", "load_encoder", "DEFAULT_MODEL", "JobOptions"]


def embed(
    texts,
    *,
    model: str = DEFAULT_MODEL,
    backend: str = "auto",
    precision: str = "auto",
    normalize: bool = True,
    chunk: bool = False,
):
    """Embed a list of texts (or one string); returns a float32 matrix with one row per text."""
    if isinstance(texts, str):
        texts = [texts]
    key = (model, backend, precision, normalize, chunk)
    if key not in _ENCODERS:
        _ENCODERS[key] = load_encoder(*key)
    return _ENCODERS[key].encode(list(texts))


_ENCODERS: dict = {}


def embed_file(
    input, output, options: JobOptions | None = None, *, ray: str | None = None, workers: int = 2, **changes
):
    """The batch job: here (job.py), or with `ray` (a cluster address: "auto", "local",
    "HOST:PORT") on an actor pool of `workers` encoders (ray_job.py). `options`: JobOptions, or
    keyword changes to its defaults (column=, model=, chunk=, ...)."""
    options = JobOptions.of(options, **changes)
    from llmkit.embedding.image_job import embed_images, is_image_input

    if is_image_input(input):  # a folder of photos or a list of image files (image_job.py)
        if ray:
            from llmkit.errors import InvalidArgument

            raise InvalidArgument("--ray does not embed images yet", "drop --ray: images are embedded here")
        return embed_images(input, output, options)
    if ray:
        from llmkit.embedding.ray_job import embed_ray

        return embed_ray(input, output, options, address=ray, workers=workers)
    from llmkit.embedding.job import embed_file as run_here

    return run_here(input, output, options)
