"""The TOML spec file: handler definitions, rules and explicit ranges.

    [handlers.copy_src]          # a named extended handler descriptor
    kind = "short_copy"          # fixup | short_copy | errno | unwind
    reg = "rcx"                  # bytes remaining (short_copy) / errno target (errno) /
                                 # return register (unwind)
    src = "rsi"                  # current source address
    dst = "rdi"                  # current destination address
    record = "r8"                # pointer to a fault record the runtime fills
    side = "src"                 # none | src | dst | both
    mc_safe = true
    imm = -14                    # errno value (errno), the value returned (unwind)

    [[rules]]
    match = "copy_*"             # a glob over function names
    handler = "short_copy"
    landing = "{name}_fixup"     # optional
    end = "landing"              # optional: a pad inside the function ends its range

    [[ranges]]
    start = "func+0x10"          # integer, "0x..." or "symbol+offset"
    end = "func+0x14"
    landing = "func_fixup"
    handler = "fixup"            # or data = 0x... for a classic data word
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from .errors import ExtableError
from .model import FLAG_MC_SAFE, Handler, Kind, Side, builtin_handlers, register_number
from .sites import Rule

_HANDLER_KEYS = {"kind", "reg", "src", "dst", "record", "side", "mc_safe", "imm"}


@dataclass
class Spec:
    """What a spec file (and the command line) asks the compiler to build."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    ranges: list[dict[str, object]] = field(default_factory=list)
    origin: str = "command line"


def load(path: str | os.PathLike[str] | None, machine: int) -> Spec:
    """Read a spec file (or none) on top of the built-in handlers for a machine."""
    spec = Spec(handlers=dict(builtin_handlers(machine)))
    if path is None:
        return spec
    path = os.fspath(path)
    spec.origin = path
    # Imported here: a build with rules on the command line alone has no TOML to read.
    if sys.version_info >= (3, 11):
        import tomllib
    else:                              # the same parser, before it joined the stdlib
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ExtableError(f"cannot read spec: {exc.strerror}", path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ExtableError(f"bad TOML: {exc}", path) from None
    unknown = set(doc) - {"handlers", "rules", "ranges"}
    if unknown:
        raise ExtableError(f"unknown top-level keys: {', '.join(sorted(unknown))}", path)
    try:
        for name, body in doc.get("handlers", {}).items():
            spec.handlers[name] = _handler(name, body, machine)
        for i, body in enumerate(doc.get("rules", [])):
            if not isinstance(body, dict) or set(body) - {"match", "handler", "landing", "end"} \
                    or not {"match", "handler"} <= set(body):
                raise ExtableError(f"rules[{i}]: needs match and handler (and optional "
                                   "landing and end)")
            spec.rules.append(Rule(str(body["match"]), str(body["handler"]),
                                   None if "landing" not in body else str(body["landing"]),
                                   f"{path}: rules[{i}] {body['match']!r}",
                                   str(body.get("end", "function"))))
        ranges = doc.get("ranges", [])
        if not isinstance(ranges, list) or not all(isinstance(r, dict) for r in ranges):
            raise ExtableError("ranges must be an array of tables")
        spec.ranges = ranges
    except ExtableError as exc:
        raise ExtableError(exc.message, path) from None
    return spec


def _handler(name: str, body: object, machine: int) -> Handler:
    if not isinstance(body, dict) or set(body) - _HANDLER_KEYS or "kind" not in body:
        raise ExtableError(f"handlers.{name}: needs kind; allowed keys: "
                           f"{', '.join(sorted(_HANDLER_KEYS))}")
    try:
        kind = Kind[str(body["kind"]).upper()]
        side = Side[str(body.get("side", "none")).upper()]
    except KeyError as exc:
        raise ExtableError(f"handlers.{name}: unknown value {exc}") from None
    regs = {key: register_number(machine, body.get(key)) for key in ("reg", "src", "dst", "record")}
    return Handler(kind, regs["reg"], regs["src"], regs["dst"], regs["record"], side,
                   FLAG_MC_SAFE if body.get("mc_safe") else 0, int(body.get("imm", 0)), name)
