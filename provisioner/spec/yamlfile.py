"""The hardened YAML reader every spec, site defaults and plans file goes through: a regular
UTF-8 file under the size limit, parsed by a SafeLoader that also refuses deep nesting, alias
bombs, recursive aliases, unbuildable values and duplicate keys, each refusal with the file and
line it is on."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from provisioner.errors import SpecError
from provisioner.spec.schema import LIMITS
from provisioner.spec.values import show


class _SpecLoader(yaml.SafeLoader):
    """A SafeLoader for input vkp does not trust. Besides what SafeLoader refuses, it refuses
    what would exhaust memory or the stack, each with the line it is on:

    - nesting deeper than a spec ever is (composing recurses once per level);
    - aliases (*name) standing for more than a few sections' worth in all, which is how a
      300-byte "billion laughs" document becomes gigabytes once anything walks or prints it;
    - an alias inside the node it names, which makes an endless (recursive) value;
    - a value a constructor cannot build (a 5000-digit number, a 13th month): a clear error,
      not a Python exception;
    - two equal keys in a mapping: YAML silently keeps the last, which hides a mistake.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open: set[str] = set()  # anchors of collections still being composed
        self._sizes: dict[yaml.Node, int] = {}
        self._expanded = 0  # what the aliases so far stand for (values and characters)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        mark: Any = event.start_mark  # the stubs mix in the C parser's Mark type
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"alias *{event.anchor} is inside the node &{event.anchor} names, which makes an "
                    "endless value; write the value out instead",
                    mark,
                )
            node = super().compose_node(parent, index)
            self._expanded += self._size(node) if node is not None else 0
            limit = LIMITS["yaml_alias_expansion"]
            if self._expanded > limit.maximum:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"YAML aliases (*name) here stand for more than {limit.maximum} values and "
                    "characters in all; write the values out instead of repeating aliases",
                    mark,
                )
            return node
        limit = LIMITS["yaml_depth"]
        if self._depth >= limit.maximum:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested more than {limit.maximum} levels deep ({limit.why}); "
                "check the brackets and indentation here",
                mark,
            )
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if anchor is not None:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)

    def _size(self, node: yaml.Node) -> int:
        # Memoised per node, so a chain of aliases costs its length, not what it stands for; the
        # depth limit bounds the recursion.
        size = self._sizes.get(node)
        if size is None:
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._size(n) for n in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            else:
                size = 1 + len(str(node.value))
            self._sizes[node] = size
        return size

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({exc}); quote it if it is text", node.start_mark
            ) from None


# A YAML int past this many characters is no size, count or port; int() would refuse it past
# 4300 digits anyway, and str() a hex one as long. Shorter absurd numbers (10^30) reach the
# field's own limit, whose message names the field.
_YAML_INT_CHARS = 100


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    if len(node.value) > _YAML_INT_CHARS:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"a number of {len(node.value)} characters; no setting is anywhere near that large",
            node.start_mark,
        )
    return loader.construct_yaml_int(node)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {show(key)} (first on line {seen[key] + 1})", key_node.start_mark
            )
        if isinstance(key, str):
            seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_SpecLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _read_text(path: Path, missing: str) -> str:
    """The file's text, refusing what is not a spec file: a device or pipe (/dev/zero never
    ends, a FIFO blocks), a file over the size limit, bytes that are not UTF-8."""
    limit = LIMITS["file_bytes"]
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before fstat can refuse it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SpecError([(str(path), missing)]) from None
    except OSError as exc:
        raise SpecError([(str(path), f"cannot be read: {exc.strerror or exc}; check the path")]) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "is a directory" if stat.S_ISDIR(mode) else "is not a regular file (a device, pipe or socket)"
        raise SpecError([(str(path), f"{what}; give the path of a YAML file")])
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit.maximum + 1)  # + 1: the size is checked on what was read, not stat
        except OSError as exc:
            raise SpecError([(str(path), f"cannot be read: {exc.strerror or exc}")]) from None
    if len(data) > limit.maximum:
        raise SpecError([(str(path), f"is larger than {limit.maximum} bytes ({limit.why}); check the path")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(
            [
                (
                    f"{path}:{line}",
                    f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                    "save the file as UTF-8",
                )
            ]
        ) from None


def _read_yaml(path: Path, *, missing: str = "no such file; check the path given to -f") -> dict[str, Any]:
    text = _read_text(path, missing)
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark and exc.context_mark.line != (mark.line if mark else -1):
            # The parser notices a missing ']' or quote lines later; point at where it began too.
            what += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        # The composer's and constructor's refusals (limits, duplicate keys) are not syntax.
        kind = (
            "YAML syntax error"
            if isinstance(exc, yaml.scanner.ScannerError | yaml.parser.ParserError)
            else "YAML error"
        )
        raise SpecError([(where, f"{kind}: {what}; fix the file at that line")]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise SpecError(
            [
                (
                    f"{path}:{line}",
                    f"holds the character U+{exc.character:04X}, which YAML does not allow; remove it"
                    if isinstance(exc.character, int)
                    else f"YAML error: {exc}",
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError([(str(path), f"YAML error: {show(str(exc))}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(
            [(str(path), f"must be a YAML mapping (name:, plan:, vsphere: ...), got {type(data).__name__}")]
        )
    return data
