"""Read an appspec's YAML with limits that a hostile bundle cannot get past.

The appspec comes from the bundle, so it is hostile: PyYAML alone lets a 600-byte "billion laughs"
(aliases of aliases) expand to 10⁹ values when walked, a 3 MB document cost 42 s of CPU, and deep nesting
ends in RecursionError. Here:

- at most ``MAX_BYTES`` (1 MiB) are read, from a regular file only (a fifo or device cannot hang us);
- libyaml scans and parses when PyYAML has it (10× faster); the composer is PyYAML's Python one, so the
  limits below hold whichever parser runs;
- the document may hold at most ``MAX_VALUES`` values counted with every alias expanded, and nest at most
  ``MAX_DEPTH`` levels (aliases included); an alias inside its own anchor (a recursive structure) and a
  key that appears twice in one mapping are refused, naming the line;
- numbers written with a leading zero (``mode: 0750``) keep their text, so a mode means what it shows;
- every failure is an ``AppSpecError`` naming the file (and line), with user text escaped and cut.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent, Event
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from s3deploy.common.text import bounded, printable
from s3deploy.errors import AppSpecError

MAX_BYTES = 1024 * 1024
"""Largest appspec read (1 MiB); real ones are a few KB."""
MAX_VALUES = 20_000
"""Most values (scalars, lists, mappings) a document may hold, each alias counted as what it expands to."""
MAX_DEPTH = 50
"""Deepest nesting of lists and mappings, aliases included (an appspec needs 6)."""
_MERGE_TAG = "tag:yaml.org,2002:merge"


class RawInt(int):
    """An int that remembers its YAML text, so an unquoted ``mode: 0750`` keeps meaning octal 750."""

    raw: str


class _Refused(yaml.YAMLError):
    """A document past one of the limits (its message is complete)."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


class _Limits(Composer, SafeConstructor, Resolver):
    """PyYAML's composer and safe constructor, with the limits of this module."""

    peek_event: Callable[[], Event | None]  # from the parser each loader below adds

    def __init__(self) -> None:
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._composed = 0
        self._weights: dict[int, tuple[int, int]] = {}  # id(node) -> (values expanded, depth expanded)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()
        mark = event.start_mark if event is not None else None
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)  # raises for an undefined alias
            if id(node) not in self._weights:  # its anchor is still being composed: it contains itself
                raise _Refused(f'alias "*{bounded(event.anchor, 60)}" is inside its own anchor', mark)
            return node
        self._composed += 1
        if self._composed > MAX_VALUES:  # checked as it grows, so a big document is refused early
            raise _Refused(f"more than {MAX_VALUES} values; an appspec needs a few hundred", mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            self._weigh(node, mark)
        return node

    def _weigh(self, node: Node, mark: Any) -> None:
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        values = 1 + sum(self._weights[id(child)][0] for child in children)
        depth = 1 + max((self._weights[id(child)][1] for child in children), default=0)
        if values > MAX_VALUES:
            raise _Refused(
                f"more than {MAX_VALUES} values once aliases (*name) are expanded; refused as a "
                '"billion laughs" document would be',
                mark,
            )
        if depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep once aliases are expanded", mark)
        self._weights[id(node)] = (values, depth)

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        first_seen: dict[tuple[str, Any], Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            first = first_seen.setdefault((key_node.tag, key_node.value), key_node.start_mark)
            if first is not key_node.start_mark:
                raise _Refused(
                    f'key "{bounded(key_node.value, 60)}" appears twice in one mapping (first at line '
                    f"{first.line + 1}); YAML keeps only the last, so merge them into one",
                    key_node.start_mark,
                )
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as e:  # a date like 2023-99-99, a 5000-digit int
            reason = str(e).split(";")[0]  # not Python's advice to the programmer after the ";"
            raise ConstructorError(None, None, f"cannot read this value: {reason}", node.start_mark) from e


def _construct_int(loader: Any, node: ScalarNode) -> int:  # Any: the stubs bound it to yaml's loaders
    value = loader.construct_yaml_int(node)
    text = str(node.value)
    if len(text) > 1 and text.startswith("0") and text.isdigit():
        raw = RawInt(value)
        raw.raw = text
        return raw
    return int(value)


_Limits.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _PureLoader(Reader, Scanner, Parser, _Limits):
    """All in Python (PyYAML without libyaml)."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        _Limits.__init__(self)


_LOADERS: list[type[_Limits]] = [_PureLoader]
try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml: the same rules, slower on big documents
    pass
else:

    class _FastLoader(CParser, _Limits):
        """libyaml scans and parses; the Python composer above builds (and limits) the nodes."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _Limits.__init__(self)

        check_node = Composer.check_node
        get_node = Composer.get_node
        get_single_node = Composer.get_single_node

    _LOADERS.insert(0, _FastLoader)


def read_yaml(path: Path, label: str) -> Any:
    """The YAML document in ``path`` as Python values; AppSpecError naming ``label`` when it cannot be."""
    return parse_yaml(_read_text(path, label), label)


def parse_yaml(text: str, label: str, loader: type[_Limits] | None = None) -> Any:
    """``text`` as Python values, within the limits of this module (``loader``: tests pick one)."""
    try:
        instance = (loader or _LOADERS[0])(text)  # type: ignore[call-arg]  # each loader takes the text
        try:
            return instance.get_single_data()
        finally:
            instance.dispose()  # type: ignore[attr-defined]  # both parsers have it
    except _Refused as e:
        raise AppSpecError(f"{label}: refused{_where(e.mark)}: {e.message}") from None
    except yaml.MarkedYAMLError as e:
        reason = bounded(e.problem or e, 200)
        raise AppSpecError(f"{label}: invalid YAML{_where(e.problem_mark)}: {reason}") from None
    except yaml.YAMLError as e:  # a ReaderError: "unacceptable character #x0007 ...", then where
        raise AppSpecError(f"{label}: invalid YAML: {bounded(str(e).splitlines()[0], 200)}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # a parser bug: still our error
        raise AppSpecError(f"{label}: cannot read it as YAML: {bounded(e, 200)}") from None


def _where(mark: Mark | None) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _read_text(path: Path, label: str) -> str:
    """At most MAX_BYTES of a regular file, as UTF-8 text (non-blocking open: a fifo cannot hang us)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as e:
        raise AppSpecError(f"{label}: cannot read: {printable(getattr(e, 'strerror', None) or e)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AppSpecError(f"{label}: not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise AppSpecError(f"{label}: cannot read: {printable(e.strerror or e)}") from None
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        raise AppSpecError(
            f"{label}: larger than {MAX_BYTES} bytes (1 MiB), the most an appspec may be; "
            "an appspec lists files, permissions and hooks in a few KB"
        )
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise AppSpecError(f"{label}: not UTF-8 text (invalid byte at offset {e.start})") from None
