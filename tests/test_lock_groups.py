"""Which sections a deployment locks: those whose destination is the same, inside or around its own."""

from __future__ import annotations

from pathlib import Path

from s3deploy.config import Config, Section
from s3deploy.runtime.agent import Agent, overlapping_groups


def section(name: str, destination: str | None) -> Section:
    return Section(name, "bucket", f"{name}.zip", destination=Path(destination) if destination else None)


def test_same_inside_and_around_overlap_and_siblings_or_prefixes_do_not() -> None:
    groups = overlapping_groups(
        [
            section("www", "/srv/www"),
            section("same", "/srv/www/"),
            section("inside", "/srv/www/static"),
            section("around", "/srv"),
            section("prefix", "/srv/www2"),  # a name prefix is not a folder prefix
            section("other", "/opt/app"),
            section("none", None),
        ]
    )
    assert groups["www"] == ["around", "inside", "same", "www"]
    assert groups["inside"] == ["around", "inside", "same", "www"]
    assert groups["around"] == ["around", "inside", "prefix", "same", "www"]
    assert groups["prefix"] == ["around", "prefix"]
    assert groups["other"] == ["other"]
    assert groups["none"] == ["none"]


def test_the_groups_are_computed_once_per_config_not_once_per_section(tmp_path: Path) -> None:
    """200 sections: the daemon asks for each section's group at start and at every SIGHUP; computing
    all groups for each of them took half a minute of CPU at start (B3)."""
    sections = {f"s{i}": section(f"s{i}", f"/srv/{i}") for i in range(200)}
    agent = Agent(Config(path=tmp_path / "config.ini", sections=sections), tmp_path / "state")
    names = [agent.lock_names(name) for name in sections]
    assert names == [[name] for name in sections]
    assert agent.lock_names("s1") is agent.lock_names("s1")  # the same list: computed once
