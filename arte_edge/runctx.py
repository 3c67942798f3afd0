"""What every stage and method gets: the recipe (with its method's config), the run directory, the task, the splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from arte_edge.errors import ArteError

if TYPE_CHECKING:
    from arte_edge.config import Recipe
    from arte_edge.rundir import RunDir
    from arte_edge.tasks.base import Item, Task


@dataclass
class RunContext:
    """Shared inputs of the stages and the method of one run."""

    recipe: Recipe
    run: RunDir
    _items_by_id: dict[str, Item] = field(default_factory=dict, repr=False)

    @property
    def method_config(self) -> Any:
        """The recipe's section for its method, validated by the method's own config model (None if it has none)."""
        return self.recipe.method_config

    @cached_property
    def task(self) -> Task:
        from arte_edge.tasks import get_task

        return get_task(self.recipe.task)

    def ensure_splits(self) -> dict[str, list[str]]:
        """Make the splits once (fixed by the recipe's seed) and record their ids in the manifest."""
        manifest = self.run.read_manifest()
        if "splits" in manifest:
            return manifest["splits"]
        from arte_edge.tasks.splits import make_splits, split_ids

        s = self.recipe.splits
        splits = make_splits(self.task.load(), seeds=s.seeds, preference=s.preference, train_pool=s.train_pool,
                             eval=s.eval, seed=self.recipe.seed)
        ids = split_ids(splits)
        self.run.update_manifest(splits=ids)
        return ids

    def split(self, name: str) -> list[Item]:
        """The items of one recorded split, in recorded order."""
        if not self._items_by_id:
            self._items_by_id.update({item.id: item for item in self.task.load()})
        ids = self.ensure_splits().get(name, [])
        missing = [i for i in ids if i not in self._items_by_id]
        if missing:
            raise ArteError(f"{self.run.manifest_path}: split {name!r} names items the task no longer has "
                            f"(e.g. {missing[0]}); the task data changed, start a new run directory")
        return [self._items_by_id[i] for i in ids]
