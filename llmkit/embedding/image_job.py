"""The batch job for images: a folder (recursively) or a list of image files → vectors.parquet.

The text job's contract (job.py), on the same work dir (workdir.py): images are read in name
order and committed in parts, so a rerun with the same files and options resumes where a kill
left it; identical images (by content: a camera that saved a frame twice, a photo copied into
two folders) are encoded once. Each file is read once: its bytes are hashed and decoded from
memory. A file that cannot be decoded (truncated, corrupt, over the pixel limit) is a failed
row in `<output>.errors.jsonl`, and the job goes on.

Rows: `id` is the image's path as found (the folder given joined with its relative path, or
the path as listed), `text_hash` the content hash, `vector` the embedding.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from llmkit.embedding import workdir
from llmkit.embedding.choices import DEFAULT_IMAGE_MODEL, DEFAULT_MODEL, IMAGE_SUFFIXES
from llmkit.embedding.images import BATCH, is_image_model, is_image_path, read_image
from llmkit.embedding.options import JobOptions
from llmkit.embedding.workdir import JobResult, PartWriter
from llmkit.errors import DataError, InvalidArgument
from llmkit.readers import FORMATS, Row

PART_IMAGES = 256  # an image costs ~1000x a text line: commit (and so resume) more often
CACHE_IMAGES = 4096  # cross-part dedup (4096 × 1280 floats ≈ 21 MB)
_SHOWN = ", ".join(IMAGE_SUFFIXES)


def is_image_input(input) -> bool:
    """Images: a list naming an image file, an image file, or a folder holding image files."""
    if isinstance(input, (list, tuple)):
        return any(is_image_path(i) for i in input)
    if is_image_path(input):
        return True
    path = Path(str(input)).expanduser()
    if not path.is_dir():
        return False
    if next(_images_under(path), None) is not None:
        return True
    # neither images nor a text input (.parquet files, a saved dataset): say "no images"
    saved = (path / "state.json").exists() or (path / "dataset_dict.json").exists()
    return not saved and next(path.rglob("*.parquet"), None) is None


def _images_under(folder: Path):
    for p in sorted(folder.rglob("*")):
        # dot files: a camera's or an editor's half-written temp files, macOS ._ sidecars
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file():
            yield p


def image_files(input) -> list[Path]:
    """The images of a job, in a stable order; a one-line DataError for a folder without images,
    a missing file, or images mixed with text inputs."""
    items = list(input) if isinstance(input, (list, tuple)) else [input]
    files: list[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            found = list(_images_under(path))
            texts = [p for p in path.rglob("*") if p.suffix.lower() in FORMATS and p.is_file()]
            if found and texts:
                raise DataError(
                    f"{path} mixes images ({len(found)}) with text inputs ({texts[0].name}, …)",
                    "embed images and texts in separate jobs (their vectors do not compare)",
                )
            if not found:
                raise DataError(
                    f"{path} is a directory with no .parquet files and no images ({_SHOWN})",
                    "give a folder of photos, image files, or a text input (a file, a dir of .parquet, hf:NAME)",
                )
            files += found
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            if not path.is_file():
                raise DataError(f"image file {path} not found", "check the path")
            files.append(path)
        elif path.suffix.lower() in FORMATS:
            raise DataError(
                f"{path} is a text input, listed with images",
                "embed images and texts in separate jobs (their vectors do not compare)",
            )
        else:
            raise DataError(f"{path}: not an image ({_SHOWN}) or a folder of them", "check the path")
    return files


def image_options(opts: JobOptions) -> JobOptions:
    """The text default model means 'not chosen': images get the image default; a text model
    named for images is refused."""
    if opts.model == DEFAULT_MODEL:
        return opts.of(opts, model=DEFAULT_IMAGE_MODEL)
    if not is_image_model(opts.model):
        raise InvalidArgument(
            f"{opts.model} is a text encoder and cannot embed images",
            f"use an image encoder: --model {DEFAULT_IMAGE_MODEL}",
        )
    return opts


def embed_images(input, output, options: JobOptions | None = None, *, encoder=None, **changes) -> JobResult:
    opts = image_options(JobOptions.of(options, **changes))
    output = workdir.check_output(output)
    files = image_files(input)
    work = workdir.work_dir(output)
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    digest = hashlib.blake2b(repr(stats).encode(), digest_size=16).hexdigest()
    key = {"images": len(files), "files_digest": digest, **opts.key()}
    done_parts = workdir.prepare(work, key)
    errors = workdir.errors_path(output)
    with workdir.discard_if_nothing_committed(work):
        from llmkit.embedding.encoders import load_encoder

        encoder = encoder or load_encoder(**opts.encoder())
        if not done_parts:
            errors.unlink(missing_ok=True)
        parts = _ImageParts(encoder, work, errors)
        resumed = sum(p["rows"] for p in done_parts)
        parts.failed = sum(p["failed"] for p in done_parts)
        size = min(opts.commit_every, PART_IMAGES)
        start = time.perf_counter()
        from rich.progress import TextColumn

        from llmkit.ui import progress_items

        with progress_items(TextColumn("{task.fields[rate]} images/s")) as bar:
            task = bar.add_task("Embedding images", total=len(files), rate="-", completed=resumed)
            for no, first in enumerate(range(0, len(files), size)):
                if no < len(done_parts):  # committed by an earlier run
                    continue
                block = [
                    Row(i, 0, str(p), str(p), {}) for i, p in enumerate(files[first : first + size], first)
                ]
                parts.commit(no, block)
                rate = parts.rows / max(time.perf_counter() - start, 1e-9)
                bar.update(task, completed=first + len(block), rate=f"{rate:,.1f}")
    if resumed + parts.rows == 0:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        raise DataError(f"no image of {input} could be read: {parts.first_error}", "check the files")
    info = {**encoder.info(), "normalized": opts.normalize, "input": str(input), "column": "image"}
    rows = workdir.finish(work, output, info, parts.failed)
    seconds = time.perf_counter() - start
    return JobResult(output, rows, parts.encoded, 0, 0, parts.failed, 0, seconds, resumed, info)


class _ImageParts(PartWriter):
    """Parts of images: read each file once (hash + decode), encode the new ones in batches."""

    def __init__(self, encoder, work: Path, errors: Path):
        super().__init__(work, errors, keep_text=False)
        self.encoder = encoder
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.first_error = ""

    def commit(self, no: int, block: list[Row]) -> None:
        hashes: list[str] = []
        failures: dict[int, str] = {}
        fresh: dict[str, np.ndarray] = {}
        pending: list[tuple[str, np.ndarray]] = []  # (hash, pixels) waiting for a batch
        for i, row in enumerate(block):
            try:
                raw = Path(row.text).read_bytes()
                h = hashlib.blake2b(raw, digest_size=16).hexdigest()
                hashes.append(h)
                if h in self.cache or h in fresh or any(h == p[0] for p in pending):
                    continue
                pending.append((h, read_image(raw, row.id)))
            except (OSError, DataError) as exc:
                if len(hashes) == i:  # the file could not even be read: no hash
                    hashes.append("")
                failures[i] = exc.message if isinstance(exc, DataError) else f"{row.id}: {exc}"
                self.first_error = self.first_error or failures[i]
                continue
            if len(pending) == BATCH:
                self._encode(pending, fresh)
        if pending:
            self._encode(pending, fresh)
        keep = [i for i in range(len(block)) if i not in failures]
        vectors = np.zeros((len(keep), self.encoder.dim), np.float32)
        for j, i in enumerate(keep):
            vectors[j] = fresh[hashes[i]] if hashes[i] in fresh else self._cached(hashes[i])
        for h, v in fresh.items():
            self.cache[h] = v
            if len(self.cache) > CACHE_IMAGES:
                self.cache.popitem(last=False)
        self.write(
            no,
            [block[i] for i in keep],
            [hashes[i] for i in keep],
            vectors,
            [(block[i], err) for i, err in failures.items()],
            [],
        )

    def _encode(self, pending: list, fresh: dict) -> None:
        vecs = self.encoder.encode_pixels(np.stack([p for _, p in pending]))
        for (h, _), v in zip(pending, vecs, strict=True):
            fresh[h] = v
        self.encoded += len(pending)
        pending.clear()

    def _cached(self, h: str) -> np.ndarray:
        self.cache.move_to_end(h)
        return self.cache[h]
