"""Tables that are data, as package data files beside this loader (standard library only).

- ``vtab_tasks.csv``: VTAB-1K's tasks (read through :mod:`peftstudy.plan.tasks`);
- ``imagenet_wnids.txt``: the 1000 ILSVRC-2012 synsets in sorted order (``sorted(os.listdir("train"))``), the class
  order of torchvision's ImageFolder, timm, CLIP's zero-shot head and the authors' ``imagenet1k_classes.txt``:
  class index = line number;
- ``imagenet_classnames.txt``: OpenAI's "clean" names for CLIP's zero-shot head (the CLIP repository's ImageNet
  notebook, as in open_clip ``zero_shot_metadata.IMAGENET_CLASSNAMES``), one a line in WNID order. Not unique:
  "missile" (657, 744) and "sunglasses" (836, 837) appear twice, as in OpenAI's list;
- ``imagenet_r_wnids.txt`` / ``imagenet_a_wnids.txt``: the 200 classes of ImageNet-R and ImageNet-A (Hendrycks et
  al., ``imagenet_r_wnids`` in hendrycks/imagenet-r ``eval.py`` and ``thousand_k_to_200`` in
  hendrycks/natural-adv-examples ``eval.py``), sorted; a subset's position is its 0..199 label;
- ``petl_vision_lists.sha256``: every split list of the authors' PETL_Vision commit and its sha256, in sha256sum's
  format (``cd data/annotations && sha256sum -c`` checks a checkout against it).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import TextIO


def open_table(name: str) -> TextIO:
    return files(__package__).joinpath(name).open()


@cache
def lines(name: str) -> tuple[str, ...]:
    """The non-empty lines of a table, in order (names may hold spaces, apostrophes and slashes)."""
    with open_table(name) as handle:
        return tuple(line.rstrip("\n") for line in handle if line.strip())


def sha256sums(name: str) -> dict[str, str]:
    """A sha256sum-format table: path -> sha256."""
    return {path: digest for digest, path in (line.split() for line in lines(name))}


WNIDS: tuple[str, ...] = lines("imagenet_wnids.txt")
CLASSNAMES: tuple[str, ...] = lines("imagenet_classnames.txt")
IMAGENET_R_WNIDS: tuple[str, ...] = lines("imagenet_r_wnids.txt")
IMAGENET_A_WNIDS: tuple[str, ...] = lines("imagenet_a_wnids.txt")
# The 200-class test sets' classes, by their --set names.
SUBSET_WNIDS: dict[str, tuple[str, ...]] = {"imagenet_r": IMAGENET_R_WNIDS, "imagenet_a": IMAGENET_A_WNIDS}


def subset_classes(set_name: str) -> list[int] | None:
    """The 1000-way class indices a test set covers: its 200 for ImageNet-R/-A, None (all 1000) otherwise."""
    if set_name not in SUBSET_WNIDS:
        return None
    index = {wnid: i for i, wnid in enumerate(WNIDS)}
    return sorted(index[wnid] for wnid in SUBSET_WNIDS[set_name])
