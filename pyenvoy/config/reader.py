"""
Reading Envoy YAML mappings field by field, with errors that name the path.

Every problem is collected (not raised) so that one run reports all of
them; each names its YAML path, e.g.
C{static_resources.clusters[0].connect_timeout: expected a duration like '0.25s', got 'soon'}.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any, Iterator, Sequence, TypeVar

_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)s$")
#: protobuf's Duration limit (about 10,000 years).
MAX_DURATION_SECONDS = 315_576_000_000
_CAMEL = re.compile(r"(?<!^)([A-Z])")

E = TypeVar("E")


class ConfigError(Exception):
    """
    One problem in a config, at one YAML path.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class ConfigErrors(Exception):
    """
    Every problem found in a config; C{str()} gives one line per problem.
    """

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = list(errors)


class Problems:
    """
    The problems found so far while reading one config.
    """

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def add(self, path: str, message: str) -> None:
        """
        Record a problem at C{path}.
        """
        self.errors.append(ConfigError(path, message))

    def raiseIfAny(self) -> None:
        """
        Raise L{ConfigErrors} if anything was recorded.
        """
        if self.errors:
            raise ConfigErrors(self.errors)


def snakeCase(name: str) -> str:
    """
    Envoy takes proto3 JSON's lowerCamelCase names as well as the
    snake_case ones; pyenvoy reads both.
    """
    return _CAMEL.sub(r"_\1", name).lower()


def describe(value: Any) -> str:
    """
    Name a YAML value's type the way a user would.
    """
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "null"
    return type(value).__name__


def parseDuration(value: Any) -> float:
    """
    Parse a protobuf Duration as Envoy's YAML writes it: C{"0.25s"}, or
    C{{seconds: 1, nanos: 500000000}}.  Return seconds.

    @raise ValueError: with a user-facing message.
    """
    if isinstance(value, str):
        # No surrounding blanks, at most nanoseconds, within protobuf's
        # range: Envoy's parser refuses the rest.
        match = _DURATION.match(value)
        if match:
            if len(match.group(1).partition(".")[2]) > 9:
                raise ValueError(f"duration {value!r} has more than 9 fractional digits")
            seconds = float(match.group(1))
            if seconds < 0:
                raise ValueError(f"duration must not be negative, got {value!r}")
            if seconds > MAX_DURATION_SECONDS:
                raise ValueError(f"duration {value!r} is out of range")
            return seconds
    elif isinstance(value, dict) and set(value) <= {"seconds", "nanos"}:
        seconds = value.get("seconds", 0)
        nanos = value.get("nanos", 0)
        if isinstance(seconds, (int, str)) and isinstance(nanos, int) and not isinstance(seconds, bool):
            try:
                whole = int(seconds)
            except ValueError:
                pass
            else:
                if abs(nanos) > 999_999_999 or (whole > 0 > nanos) or (whole < 0 < nanos):
                    raise ValueError(f"duration nanos {nanos} out of range for {whole} seconds")
                total = whole + nanos / 1e9
                if total > MAX_DURATION_SECONDS:
                    raise ValueError(f"duration {whole}s is out of range")
                if total >= 0:
                    return total
    raise ValueError(f"expected a duration like '0.25s', got {describe(value)}")


class Section:
    """
    One YAML mapping being read, at a known path.

    Read fields with the typed getters; each remembers the field as seen.
    L{finish} then reports fields that were never read: the names in
    C{unsupported} as "not supported by pyenvoy yet" (Envoy has them, we
    do not), anything else as unknown.
    """

    def __init__(self, raw: Any, path: str, problems: Problems) -> None:
        self.path = path
        self.problems = problems
        self.raw: dict[str, Any] = {}
        self._keys: dict[str, str] = {}
        self._seen: set[str] = set()
        self._finished = False
        self.valid = isinstance(raw, dict)
        if raw is None:
            self.valid = True
            raw = {}
        if not self.valid:
            problems.add(path, f"expected a mapping, got {describe(raw)}")
            return
        for key, value in raw.items():
            if not isinstance(key, str):
                problems.add(path, f"field names must be strings, got {describe(key)}")
                continue
            name = key if key.startswith("@") else snakeCase(key)
            if name in self.raw:
                problems.add(self.pathOf(key), f"field {name!r} given twice")
                continue
            self.raw[name] = value
            self._keys[name] = key

    def pathOf(self, name: str) -> str:
        """
        The YAML path of field C{name} of this mapping.
        """
        return f"{self.path}.{name}" if self.path else name

    def error(self, message: str, field: str | None = None) -> None:
        """
        Record a problem with this mapping, or with one of its fields.
        """
        self.problems.add(self.pathOf(field) if field else self.path, message)

    def has(self, name: str) -> bool:
        """
        Whether field C{name} is present (and marks it seen).
        """
        self._seen.add(name)
        return name in self.raw

    def _take(self, name: str, required: bool) -> Any:
        self._seen.add(name)
        if self.raw.get(name) is None:
            # proto3 JSON: null is the default value, so a required field
            # given as null is as missing as one left out.
            if required:
                self.error(f"missing required field {name!r}")
            return None
        return self.raw[name]

    def _wrong(self, name: str, wanted: str, value: Any) -> None:
        self.error(f"expected {wanted}, got {describe(value)}", name)

    def string(self, name: str, default: str | None = None, required: bool = False,
               nonEmpty: bool = False) -> str | None:
        """
        A string field.
        """
        value = self._take(name, required)
        if value is None:
            return default
        if not isinstance(value, str):
            self._wrong(name, "a string", value)
            return default
        if nonEmpty and not value:
            self.error("must not be empty", name)
        return value

    def integer(self, name: str, default: int | None = None, required: bool = False,
                minimum: int | None = None, maximum: int | None = None) -> int | None:
        """
        An integer field (proto3 JSON also allows it as a string).
        """
        value = self._take(name, required)
        if value is None:
            return default
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong(name, "an integer", value)
            return default
        if minimum is not None and value < minimum:
            self.error(f"must be at least {minimum}, got {value}", name)
            return default
        if maximum is not None and value > maximum:
            self.error(f"must be at most {maximum}, got {value}", name)
            return default
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        """
        A boolean field.
        """
        value = self._take(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._wrong(name, "true or false", value)
            return default
        return value

    def uint32Value(self, name: str, default: int | None = None, minimum: int = 0) -> int | None:
        """
        A C{google.protobuf.UInt32Value}: a bare integer or C{{value: N}}.
        """
        value = self.raw.get(name)
        if isinstance(value, dict) and set(value) == {"value"}:
            self.raw[name] = value["value"]
        return self.integer(name, default, minimum=minimum, maximum=2**32 - 1)

    def duration(self, name: str, default: float | None = None, required: bool = False,
                 positive: bool = False) -> float | None:
        """
        A Duration field, in seconds.
        """
        value = self._take(name, required)
        if value is None:
            return default
        try:
            seconds = parseDuration(value)
        except ValueError as e:
            self.error(str(e), name)
            return default
        if positive and seconds <= 0:
            self.error(f"must be greater than 0s, got {value!r}", name)
            return default
        return seconds

    def enum(self, name: str, choices: Sequence[str], default: str,
             unsupported: Sequence[str] = ()) -> str:
        """
        An enum field, by name; C{unsupported} are Envoy's values that
        pyenvoy does not implement yet.
        """
        value = self._take(name, False)
        if value is None:
            return default
        if isinstance(value, str) and value in choices:
            return value
        if isinstance(value, str) and value in unsupported:
            self.error(f"{value} is not supported by pyenvoy yet; supported: {', '.join(choices)}", name)
            return default
        self.error(f"expected one of {', '.join(choices)}, got {describe(value)}", name)
        return default

    def section(self, name: str, required: bool = False) -> "Section | None":
        """
        A nested mapping, or C{None} when absent.
        """
        value = self._take(name, required)
        if value is None:
            return None
        sub = Section(value, self.pathOf(name), self.problems)
        return sub if sub.valid else None

    def sections(self, name: str, required: bool = False,
                 nonEmpty: bool = False) -> list["Section"]:
        """
        A list of mappings (invalid items are reported and skipped).
        """
        out = []
        for item, path in self.items(name, required=required, nonEmpty=nonEmpty):
            sub = Section(item, path, self.problems)
            if sub.valid:
                out.append(sub)
        return out

    def items(self, name: str, required: bool = False,
              nonEmpty: bool = False) -> Iterator[tuple[Any, str]]:
        """
        Yield C{(item, path)} for a list field.
        """
        value = self._take(name, required)
        if value is None:
            if nonEmpty and not required:
                pass
            return
        if not isinstance(value, list):
            self._wrong(name, "a list", value)
            return
        if nonEmpty and not value:
            self.error("must not be empty", name)
        base = self.pathOf(name)
        for index, item in enumerate(value):
            yield item, f"{base}[{index}]"

    def strings(self, name: str) -> list[str]:
        """
        A list of strings.
        """
        out = []
        for item, path in self.items(name):
            if isinstance(item, str):
                out.append(item)
            else:
                self.problems.add(path, f"expected a string, got {describe(item)}")
        return out

    def ignore(self, *names: str) -> None:
        """
        Accept fields that carry no meaning for pyenvoy (documentation-only
        fields such as C{@type} on a mapping already dispatched on).
        """
        self._seen.update(names)

    def finish(self, unsupported: Sequence[str] = ()) -> None:
        """
        Report every field that was not read: Envoy fields pyenvoy does not
        implement (C{unsupported}) are said to be so, the rest are unknown.
        Only the first call reports.
        """
        if self._finished:
            return
        self._finished = True
        for name in self.raw:
            if name in self._seen:
                continue
            key = self._keys[name]
            if name in unsupported:
                self.error(f"field {name!r} is not supported by pyenvoy yet", key)
            else:
                self.error(f"unknown field {key!r}", key)

    def oneOf(self, *names: str, required: bool = True) -> str | None:
        """
        Check that exactly one of C{names} (a proto oneof) is set, and
        return which.
        """
        self._seen.update(names)
        present = [n for n in names if self.raw.get(n) is not None]
        if len(present) > 1:
            self.error(f"only one of {', '.join(present)} may be set")
            return present[0]
        if not present:
            if required:
                self.error(f"one of {', '.join(names)} is required")
            return None
        return present[0]


def dataSourceBytes(section: "Section", required: bool = True) -> tuple[bytes, str] | None:
    """
    Read a C{config.core.v3.DataSource} (C{inline_string}, C{inline_bytes}
    (base64), C{filename} or C{environment_variable}) now; return its bytes
    with the field they came from, or C{None} when it is absent (and not
    C{required}) or after reporting why it cannot be read.
    """
    which = section.oneOf("inline_string", "inline_bytes", "filename", "environment_variable",
                          required=required)
    data: bytes | None = None
    if which == "inline_string":
        text = section.string("inline_string")
        data = text.encode("utf-8") if text is not None else None
    elif which == "inline_bytes":
        raw = section.string("inline_bytes")
        if raw is not None:
            try:
                data = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                section.error("expected base64 bytes", "inline_bytes")
    elif which == "filename":
        name = section.string("filename", nonEmpty=True)
        if name:
            try:
                with open(name, "rb") as f:
                    data = f.read()
            except OSError as e:
                section.error(f"cannot read {name!r}: {e.strerror}", "filename")
    elif which == "environment_variable":
        var = section.string("environment_variable", nonEmpty=True)
        if var:
            value = os.environ.get(var)
            if value is None:
                # Envoy's own message.
                section.error(f"Environment variable doesn't exist: {var}",
                              "environment_variable")
            else:
                data = value.encode("utf-8")
    section.ignore("inline_string", "inline_bytes", "filename", "environment_variable")
    section.finish(unsupported=("watched_directory",))
    if data is None or which is None:
        return None
    return data, which


def dataSourceText(section: "Section", required: bool = True) -> tuple[str, str] | None:
    """
    L{dataSourceBytes} as UTF-8 text.
    """
    found = dataSourceBytes(section, required)
    if found is None:
        return None
    data, which = found
    try:
        return data.decode("utf-8"), which
    except UnicodeDecodeError:
        section.error("expected UTF-8 text", which)
        return None
