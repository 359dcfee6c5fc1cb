"""What every recipe kind shares (the file it was loaded from, the path rule) and where each
kind's shipped recipes live. A leaf: each kind's schema (`llmkit.recipe.Recipe`,
`llmkit.embedding.schema.EmbedRecipe`) builds on it, and `llmkit.recipe` imports those schemas, so
this cannot live in `llmkit.recipe` without an import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # a link to the top-level recipes/ in a checkout
KINDS = {"train": RECIPES_DIR, "embed": RECIPES_DIR / "embed"}  # kind → folder of its shipped recipes


class RecipeBase(BaseModel):
    """What both kinds share: the file a recipe was loaded from, and the path rule."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    kind: ClassVar[str]
    example: ClassVar[str]  # a shipped recipe to point at in error hints

    _source: Path | None = None

    @property
    def source(self) -> Path | None:
        """The recipe file (absolute), or None for a recipe built from a dict."""
        return self._source

    def resolve_input(self, value: str | Path) -> Path:
        """An input path: as given if absolute or present from the current directory, else
        relative to the recipe file's folder."""
        p = Path(value).expanduser()
        if p.is_absolute() or p.exists() or self._source is None:
            return p
        return self._source.parent / p

    def resolve_path(self, value: str | Path) -> Path:
        """An input path (see `resolve_input`); the name the training code uses."""
        return self.resolve_input(value)

    def resolve_output(self, value: str | Path, base: Path | None = None) -> Path:
        """An output path: relative to `base`, by default the current directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base or Path.cwd()) / p

    def inputs(self) -> dict[str, Path]:
        """The local input files this recipe reads, key → resolved path."""
        return {}
