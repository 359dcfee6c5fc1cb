"""`llmkit classify watch`: label each new image in a folder once, as a camera writes it.

* A file is read only once it is whole: its size and mtime must stay the same for `settle`
  seconds across polls (a camera or an rsync writes a photo in pieces; a JPEG read half-done
  decodes as "truncated"). Dot files (writers' temp names) are not looked at.
* Each result is one line appended to the log (JSON Lines, or CSV for a .csv log) and flushed
  to disk before the next image. The log is the memory: on start it is read back, and an image
  whose (path, size, mtime) is already logged is never classified again — a restart, a crash or
  a kill loses at most the image in flight. A last line cut by a crash is dropped on start.
* An image that cannot be decoded even when stable is logged with its error (once, like any
  other), so a broken file is not retried forever; if it is rewritten it counts as new.
* SIGINT/SIGTERM end the loop after the image in hand, exit 0.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

from llmkit.embedding.image_classify import ImagePredictor
from llmkit.embedding.image_job import _images_under
from llmkit.errors import InvalidArgument

CSV_FIELDS = ("time", "path", "label", "score", "error", "size", "mtime_ns")


class Log:
    """The append-only result log, and the set of (path, size, mtime_ns) it already holds."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.csv = self.path.suffix.lower() == ".csv"
        if self.path.suffix.lower() not in (".csv", ".jsonl"):
            raise InvalidArgument(
                f"--log {self.path} must end in .jsonl or .csv", "e.g. --log predictions.jsonl"
            )
        self.done: set[tuple[str, int, int]] = set()
        if self.path.exists():
            self._repair()
            for record in self._records():
                self.done.add((str(record["path"]), int(record["size"]), int(record["mtime_ns"])))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (open for the loop)
        if new and self.csv:
            self._write(",".join(CSV_FIELDS) + "\n")

    def _repair(self) -> None:
        """A crash mid-write leaves a last line without its newline: cut it (its image is redone)."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    def _records(self):
        text = self.path.read_text(encoding="utf-8")
        if self.csv:
            yield from csv.DictReader(io.StringIO(text))
        else:
            for line in text.splitlines():
                if line.strip():
                    yield json.loads(line)

    def append(self, record: dict) -> None:
        if self.csv:
            buf = io.StringIO()
            csv.writer(buf).writerow([record.get(k, "") for k in CSV_FIELDS])
            self._write(buf.getvalue())
        else:
            self._write(json.dumps(record) + "\n")
        self.done.add((record["path"], record["size"], record["mtime_ns"]))

    def _write(self, text: str) -> None:
        self.fh.write(text)
        self.fh.flush()
        os.fsync(self.fh.fileno())  # on disk before the next image: a restart trusts this file


def watch(
    classifier: Path | None,
    folder: Path,
    log: Path,
    *,
    imagenet: bool = False,
    interval: float = 1.0,
    settle: float = 2.0,
    once: bool = False,
    on_result=None,
) -> int:
    """Poll `folder` (recursively) and log a label per new image; returns how many were logged.
    `once`: stop when every image present has been logged (for cron jobs and tests)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidArgument(f"{folder} is not a folder", "give the folder the camera writes into")
    journal = Log(log)
    predictor = ImagePredictor(classifier, imagenet)
    stop = {"now": False}

    def _stop(signum, frame):
        stop["now"] = True

    # handlers can only be set from the main thread; elsewhere the caller stops us its own way
    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    seen: dict[str, tuple[int, int, float]] = {}  # path → (size, mtime_ns, monotonic time first seen so)
    logged = 0
    try:
        while not stop["now"]:
            pending = False
            for path in _images_under(folder):
                if stop["now"]:
                    break
                rel = path.relative_to(folder).as_posix()
                try:
                    st = path.stat()
                except FileNotFoundError:  # gone between the listing and now
                    continue
                if (rel, st.st_size, st.st_mtime_ns) in journal.done:
                    continue
                pending = True
                now = time.monotonic()
                before = seen.get(rel)
                if before is None or before[:2] != (st.st_size, st.st_mtime_ns):
                    seen[rel] = (st.st_size, st.st_mtime_ns, now)  # new or still growing: wait
                    continue
                if now - before[2] < settle or st.st_size == 0:
                    continue
                data = path.read_bytes()
                if len(data) != st.st_size:  # written to since the stat: start the wait again
                    seen.pop(rel, None)
                    continue
                result = predictor.predict(rel, data)
                record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "path": rel, **result}
                record.pop("id", None)
                record.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
                journal.append(record)
                seen.pop(rel, None)
                logged += 1
                if on_result:
                    on_result(record)
            if once and not pending:
                break
            time.sleep(interval)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        journal.fh.close()
    return logged
