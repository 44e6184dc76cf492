"""`source: archive`: a folder in the processed-VTAB layout inside an entry of `archives`, fetched and extracted
by the fetch and extract rules, then indexed (data.layout.run_index)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from peftstudy.plan.sources.base import ConfigError, register
from peftstudy.plan.sources.local import Indexed

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan


# Where the fetch rule puts each of `archives`; a backbone's `source.url` there names one of them.
ARCHIVE_DIR = "resources/archives/"


def archive_path(archive: str) -> str:
    return f"{ARCHIVE_DIR}{archive}"


def extracted(archive: str) -> str:
    """Where the extract rule unpacks an archive."""
    return f"resources/data/{archive}"


def archive_checksum(archive: str) -> str:
    """The sha256 file the fetch rule writes beside the archive."""
    return f"{archive_path(archive)}.sha256"


def check_archive(name: str, entry: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    archives = config.get("archives", {})
    if entry["archive"] not in archives:
        raise ConfigError(
            f"datasets.{name}.archive: unknown archive {entry['archive']!r}; defined under archives: "
            f"{', '.join(archives) or '(none)'}"
        )


class Archive(Indexed):
    name = "archive"
    required = frozenset({"archive", "folder"})

    def folder(self, plan: Plan, dataset: str) -> str:
        entry = plan.datasets[dataset]
        return f"{extracted(entry['archive'])}/{entry['folder']}"

    def origin(self, plan: Plan, dataset: str) -> tuple[str, str | None]:
        archive = plan.datasets[dataset]["archive"]
        return extracted(archive), archive_checksum(archive)

    def record(self, plan: Plan, dataset: str) -> dict[str, Any]:
        entry = plan.datasets[dataset]
        url = plan.config.get("archives", {})[entry["archive"]]["url"]
        return {"source": "archive", "archive": entry["archive"], "url": url, "folder": entry["folder"]}

    def check(self, name: str, entry: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        super().check(name, entry, config)
        check_archive(name, entry, config)

    def archives(self, entry: Mapping[str, Any]) -> tuple[str, ...]:
        return (entry["archive"],)

    def vtab_task(self, entry: Mapping[str, Any]) -> str | None:
        return str(entry["folder"]).rstrip("/").rpartition("/")[2]


register(Archive())
